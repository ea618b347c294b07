"""From the quick start to your own deployment: the demo policy as shipped,
per-route metric labels, access logs, `make run POLICY=…` with hot reload."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from harness import BUILD, ROOT, free_port, shipped_policy_text
from key_server import add_cluster
from keys_serve import KeysServe

sys.path.insert(0, str(ROOT / "envoy"))
import run_local  # noqa: E402

DEMO_PEPPER = run_local.DEMO_PEPPER
DEMO_JWT_SECRET = run_local.DEMO_VALUES["EDGE_AUTH_DEMO_JWT_SECRET"]
DEMO_KEY = run_local.DEMO_KEY


@pytest.fixture(scope="module")
def access_log(tmp_path_factory):
    return tmp_path_factory.mktemp("access") / "access.log"


@pytest.fixture(scope="module")
def demo_keys():
    """The demo key server, as make run starts it: until its set loads, an
    unknown key is 503 (row 16), not 401."""
    keyset = json.loads((ROOT / "envoy/keyset.json").read_text())
    server = KeysServe(keyset["keys"], keyset["revoked"]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def demo(envoy_factory, access_log, demo_keys):
    """The shipped demo policy, its secrets as make run gives them, its key
    server, and the shipped access log written to a file."""
    def edit(config):
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"][0]["typed_config"]["path"] = str(access_log)
        add_cluster("keyserver", demo_keys.port)(config)
    os.environ["EDGE_AUTH_DEMO_JWT_SECRET"] = DEMO_JWT_SECRET
    try:
        envoy = envoy_factory(shipped_policy_text(), pepper=DEMO_PEPPER, edit=edit)
    finally:
        del os.environ["EDGE_AUTH_DEMO_JWT_SECRET"]
    deadline = time.monotonic() + 10
    while envoy.request("/v1/agents", [("x-api-key", run_local.SERVED_KEY)]).status != 200:
        assert time.monotonic() < deadline, "the demo key set never loaded"
        time.sleep(0.05)
    return envoy


def prometheus(envoy):
    with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus") as r:
        return r.read().decode()


def test_the_demo_policy_works_as_the_banner_says(demo):
    r = demo.request("/v1/agents", [("authorization", f"Bearer {DEMO_KEY}")])
    assert r.status == 200 and r.upstream_headers["x-key-id"] == "key_demo", r
    token = run_local.demo_jwt(DEMO_JWT_SECRET, json.loads(shipped_policy_text()))
    r = demo.request("/api/v1/api-keys", [("authorization", f"Bearer {token}")], method="POST")
    assert r.status == 200 and r.upstream_headers["x-auth-method"] == "jwt", r
    forged = run_local.demo_jwt("x" * 40, json.loads(shipped_policy_text()))
    assert demo.request("/api/v1/api-keys", [("authorization", f"Bearer {forged}")], method="POST").status == 401


WASM_ONLY = pytest.mark.skipif(BUILD == "dynamic", reason="wasm build only for now (docs/native.md)")


@WASM_ONLY
def test_denials_are_labelled_by_route_and_code_in_prometheus(demo):
    for _ in range(2):
        demo.request("/v1/agents", [("x-api-key", "sk_live_acme_NotARealKey")])
    demo.request("/v1/admin/users", [("x-api-key", DEMO_KEY)])
    demo.request("/nowhere")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = prometheus(demo)
        if 'edge_auth_route_denied{route="default",code="missing_authentication"}' in text:
            break
        time.sleep(0.2)
    assert 'edge_auth_route_denied{route="agents",code="invalid_api_key"} 2' in text, text
    assert 'edge_auth_route_denied{route="admin",code="insufficient_scope"} 1' in text
    assert 'edge_auth_route_denied{route="default",code="missing_authentication"} 1' in text
    # The unlabelled per-code counters stay as they were.
    assert "\nedge_auth_denied_invalid_api_key{} 2\n" in text, [l for l in text.splitlines() if "edge_auth_denied" in l]
    lines = demo.wait_for_log("deny invalid_api_key").splitlines()
    assert any("deny invalid_api_key" in line and "route=agents key=-" in line for line in lines)


@WASM_ONLY
def test_the_access_log_shows_the_decision_and_who_called(demo, access_log):
    demo.request("/v1/agents?api_key=never-logged", [("x-api-key", DEMO_KEY)])
    demo.request("/v1/agents", [("x-api-key", "sk_live_acme_NotARealKey")])
    deadline = time.monotonic() + 10
    lines = []
    while time.monotonic() < deadline:
        lines = access_log.read_text().splitlines() if access_log.exists() else []
        if any("edge_auth=denied code=invalid_api_key" in line for line in lines) and \
                any("key=key_demo" in line for line in lines):
            break
        time.sleep(0.2)
    allowed = next(line for line in lines if "key=key_demo" in line)
    assert " 200 edge_auth=allowed code=- route=agents org=org_42 account=acme key=key_demo " in allowed, allowed
    assert "never-logged" not in access_log.read_text()
    denied = next(line for line in lines if "code=invalid_api_key" in line)
    assert " 401 edge_auth=denied code=invalid_api_key route=agents org=- account=- key=- " in denied, denied
    assert "NotARealKey" not in access_log.read_text()


def test_run_local_gives_every_named_variable_a_demo_value():
    policy = {"api_keys": {"pepper_env": "MY_PEPPER"},
              "jwt": {"providers": [{"name": "p", "issuer": "i", "jwks": {"keys": [{"kty": "oct", "k_env": "HS"}]}}]},
              "sessions": {"key_env": "SESSION_KEY"}}
    assert run_local.secret_variables(policy) == ["HS", "MY_PEPPER", "SESSION_KEY"]
    assert all(len(run_local.demo_value(n)) >= 32 for n in ["HS", "X"])
    assert run_local.demo_value("EDGE_AUTH_PEPPER") == DEMO_PEPPER


class RunLocal:
    def __init__(self, policy_path, extra_env=None):
        self.port, self.admin_port, self.upstream_port = free_port(), free_port(), free_port()
        self.keys_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AUTH_")}
        env.update(extra_env or {})
        self.out_path = policy_path.parent / "run_local.out"
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "envoy/run_local.py"), "--policy", str(policy_path),
             "--port", str(self.port), "--admin-port", str(self.admin_port),
             "--upstream-port", str(self.upstream_port), "--keys-port", str(self.keys_port)],
            cwd=ROOT, env=env, stdout=self.out, stderr=subprocess.STDOUT,
            # As a shell runs a background job: SIGINT ignored on entry.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )

    def output(self):
        return self.out_path.read_text()

    def wait_output(self, text, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return self.output()
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in:\n{self.output()}")

    def get(self, path, headers=None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def stop(self, signum):
        self.proc.send_signal(signum)
        code = self.proc.wait(20)
        self.out.close()
        return code


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_make_run_applies_policy_edits_and_stops_cleanly(tmp_path, signum):
    policy_path = tmp_path / "policy.json"
    policy = json.loads((ROOT / "envoy/policy.json").read_text())
    policy_path.write_text(json.dumps(policy))
    run = RunLocal(policy_path, {"EDGE_AUTH_PEPPER": "not-the-demo-pepper"})
    try:
        banner = run.wait_output("Ctrl-C to stop.")
        assert "EDGE_AUTH_PEPPER: your shell's value (not shown)" in banner
        assert "EDGE_AUTH_DEMO_JWT_SECRET: a demo value" in banner
        assert "not the demo pepper" in banner and "not-the-demo-pepper" not in banner
        assert DEMO_JWT_SECRET not in banner
        # 503 until keys serve's set loads (row 16), then the demo key under
        # another pepper is simply unknown.
        deadline = time.monotonic() + 10
        while (status := run.get("/v1/agents", {"x-api-key": DEMO_KEY})) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 401
        assert run.get("/api/accounts") == 200

        # An edit applies without a restart.
        policy["routes"][0]["auth"] = "required"
        policy["routes"][0].pop("methods")
        policy_path.write_text(json.dumps(policy))
        run.wait_output("run_local: policy applied")
        deadline = time.monotonic() + 5
        while run.get("/api/accounts") != 401 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.get("/api/accounts") == 401

        # A broken policy is refused, saying why; the last good one stays.
        policy_path.write_text(json.dumps({**policy, "routez": []}))
        out = run.wait_output("refused, keeping the last good policy")
        assert "routez: unknown field" in out
        assert run.get("/api/accounts") == 401
    finally:
        code = run.stop(signum)
    assert code == 0, run.output()
    assert "run_local: stopped" in run.output()


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "envoy/examples").glob("*.json")))
def test_make_run_serves_every_example_policy(tmp_path, example):
    """`make run POLICY=envoy/examples/<x>.json`: demo values for the secrets it
    names, and a filter that answers."""
    policy_path = tmp_path / example
    policy_path.write_text((ROOT / "envoy/examples" / example).read_text())
    run = RunLocal(policy_path)
    try:
        run.wait_output("Ctrl-C to stop.")
        # No credential on the default route: the filter's own JSON answer.
        assert run.get("/no-such-route") in (401, 400), run.output()
    finally:
        code = run.stop(signal.SIGTERM)
    assert code == 0, run.output()
