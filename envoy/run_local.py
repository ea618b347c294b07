"""`make run`: the demo upstream and Envoy with edge-auth, on localhost.

    make run                                  # the demo policy, envoy/policy.json
    make run POLICY=path/to/policy.json       # your own policy

Run from the repository root (envoy/envoy.yaml names the module by a path
relative to it). Envoy starts from envoy/envoy.yaml with its listener moved into
an LDS file that Envoy watches; when the policy file changes, the policy is
checked with `edge-auth policy check` and, if good, written into that file, so
Envoy swaps it in without a restart or a dropped request. A policy that fails
the check, or that Envoy refuses, leaves the last good one in place, and this
script says why. Ctrl-C (SIGINT) or SIGTERM stops everything.

Every environment variable the policy names (`pepper_env`, `k_env`, any other
`*_env`) gets a demo value unless your shell sets it; the banner lists which.
"""

import argparse
import base64
import copy
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

from demo_upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent
ENVOY_YAML = ROOT / "envoy/envoy.yaml"
DEMO_POLICY = ROOT / "envoy/policy.json"
CLI = ROOT / "target/release/edge-auth"
DEFAULT_PEPPER_ENV = "EDGE_AUTH_PEPPER"
DEMO_PEPPER = "demo-pepper-not-for-production"
# Demo values of the variables the shipped policies name; others get one made
# from their name. All are public: never use them outside a demo.
DEMO_VALUES = {
    DEFAULT_PEPPER_ENV: DEMO_PEPPER,
    "EDGE_AUTH_DEMO_JWT_SECRET": "demo-jwt-secret-not-for-production-0001",
}
DEMO_KEY = "sk_live_acme_DemoKey0000000000000000000000000001"
REVOKED_KEY = "sk_live_acme_RevokedKey00000000000000000000000002"
SERVED_KEY = "sk_live_globex_ServedKey000000000000000000000005"
POLL_S = 0.3


def secret_variables(policy):
    """The environment variables a policy names: `pepper_env` (by default
    EDGE_AUTH_PEPPER when there are API keys) and every other `*_env`."""
    names = set()
    if isinstance(policy.get("api_keys"), dict):
        names.add(policy["api_keys"].get("pepper_env", DEFAULT_PEPPER_ENV))

    def walk(value):
        if isinstance(value, dict):
            for name, inner in value.items():
                if name.endswith("_env") and isinstance(inner, str) and inner:
                    names.add(inner)
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(policy)
    return sorted(names)


def demo_value(name):
    # At least 32 bytes: enough for every secret the filter checks the length of.
    return DEMO_VALUES.get(name, f"demo-{name.lower()}-not-for-production".ljust(40, "0"))


def secret_environment(names):
    """Envoy's environment for `names`: the shell's value where it has one,
    a demo value otherwise. Returns (env, names given demo values)."""
    env = {k: v for k, v in os.environ.items() if k not in names}
    demo = []
    for name in names:
        if os.environ.get(name):
            env[name] = os.environ[name]
        else:
            env[name] = demo_value(name)
            demo.append(name)
    return env, demo


def wasm_filter(listener):
    for chain in listener["filter_chains"]:
        for f in chain["filters"]:
            for hf in f["typed_config"].get("http_filters", []):
                if hf["name"] == "envoy.filters.http.wasm":
                    return hf["typed_config"]["config"]
    raise LookupError("no wasm filter in envoy/envoy.yaml")


class DynamicEnvoy:
    """envoy/envoy.yaml with its listener in a watched LDS file."""

    def __init__(self, directory, port, admin_port, upstream_port, keys_port):
        self.dir = Path(directory)
        self.watched = self.dir / "lds"
        self.watched.mkdir()
        self.lds = self.watched / "lds.json"
        self.admin = f"http://127.0.0.1:{admin_port}"
        config = yaml.safe_load(ENVOY_YAML.read_text())
        self.listener = config["static_resources"].pop("listeners")[0]
        self.listener["address"]["socket_address"]["port_value"] = port
        config["admin"]["address"]["socket_address"]["port_value"] = admin_port
        ports = {"upstream": upstream_port, "keyserver": keys_port}
        for cluster in config["static_resources"]["clusters"]:
            if cluster["name"] in ports:
                endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                endpoint["address"]["socket_address"]["port_value"] = ports[cluster["name"]]
        config["node"] = {"id": "edge-auth-local", "cluster": "edge-auth"}
        config["dynamic_resources"] = {"lds_config": {
            "path_config_source": {"path": str(self.lds), "watched_directory": {"path": str(self.watched)}},
            "resource_api_version": "V3"}}
        self.bootstrap = self.dir / "envoy.json"
        self.bootstrap.write_text(json.dumps(config))

    def write(self, policy_text, env_names):
        """Puts the policy into the LDS file (atomically: Envoy watches for
        files moved into the directory)."""
        listener = copy.deepcopy(self.listener)
        wasm = wasm_filter(listener)
        wasm["configuration"]["value"] = policy_text
        wasm["vm_config"]["environment_variables"] = {"host_env_keys": env_names}
        doc = {"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}
        tmp = self.dir / "lds.json.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.lds)

    def lds_counters(self):
        try:
            with urllib.request.urlopen(f"{self.admin}/stats?filter=listener_manager.lds.update_", timeout=1) as r:
                text = r.read().decode()
        except OSError:
            return None
        counters = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            counters[name.rsplit(".", 1)[-1]] = int(value) if value.isdigit() else 0
        return counters.get("update_success", 0), counters.get("update_rejected", 0)

    def wait_for_update(self, before, timeout=10):
        """'applied', 'rejected' or None (no verdict in time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.lds_counters()
            if now and before and now[1] > before[1]:
                return "rejected"
            if now and before and now[0] > before[0]:
                return "applied"
            time.sleep(0.05)
        return None


class LogTail(threading.Thread):
    """Copies Envoy's log to ours, remembering the filter's last config error."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.last_config_error = None

    def run(self):
        for raw in self.stream:
            line = raw.decode(errors="replace")
            if "edge-auth: config:" in line:
                self.last_config_error = line[line.index("edge-auth: config:"):].strip()
            sys.stderr.write(line)
            sys.stderr.flush()


def policy_check(path, env):
    out = subprocess.run([str(CLI), "policy", "check", str(path)], capture_output=True, text=True, env=env)
    errors = [line for line in out.stderr.splitlines() if not line.startswith("note:")]
    return out.returncode == 0, "\n".join(errors)


def key_hash(key, pepper):
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


def demo_jwt(secret, policy):
    """An HS256 token for the demo provider, if the policy has it."""
    providers = (policy.get("jwt") or {}).get("providers", [])
    provider = next((p for p in providers if p.get("name") == "demo-console"), None)
    if provider is None:
        return None
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": "demo-hs256"}
    claims = {"iss": provider["issuer"], "aud": provider.get("audiences", ["edge-auth-demo"])[0],
              "sub": "demo-user", "org_id": "org_42", "scope": "keys:write", "iat": now, "exp": now + 86400}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def banner(args, policy_path, policy, env, demo_names):
    port = args.port
    names = secret_variables(policy)
    lines = [f"edge-auth is running: Envoy on http://localhost:{port} -> demo upstream on :{args.upstream_port}",
             f"policy: {policy_path} (edit it: a good policy applies within a second, no restart)",
             f"admin and stats: http://127.0.0.1:{args.admin_port}/stats/prometheus", ""]
    if names:
        lines.append("secrets from environment variables the policy names:")
        for name in names:
            origin = "a demo value (public, never use it outside a demo)" if name in demo_names \
                else "your shell's value (not shown)"
            lines.append(f"  {name}: {origin}")
        lines.append("")
    pepper_env = (policy.get("api_keys") or {}).get("pepper_env", DEFAULT_PEPPER_ENV)
    pepper = env.get(pepper_env)
    if pepper_env in demo_names:
        lines += [f"mint a key that works here (the demo pepper is {DEMO_PEPPER!r}):",
                  f"  {pepper_env}={DEMO_PEPPER} target/release/edge-auth key new --account acme --org org_42 "
                  "--scopes agents:read",
                  f"  then add its record to {policy_path} under api_keys.keys.", ""]
    elif pepper is not None:
        lines += [f"mint keys with the same {pepper_env} exported: target/release/edge-auth key new ...", ""]
    hashes = {k.get("hash") for k in (policy.get("api_keys") or {}).get("keys", [])}
    # The demo keys' curls, for a policy holding them (the demo policy or a copy).
    if pepper is not None and key_hash(DEMO_KEY, DEMO_PEPPER) in hashes:
        if pepper != DEMO_PEPPER:
            lines += [f"warning: {pepper_env} in your shell is not the demo pepper, so the demo keys answer",
                      f"401 invalid_api_key. Unset it ({pepper_env}= make run) to try them.", ""]
        else:
            lines += demo_curls(port, args.admin_port, policy, env)
    lines.append("Ctrl-C to stop.")
    return "\n".join(lines)


def demo_curls(port, admin_port, policy, env):
    lines = ["Try:", "",
             "  # a good key: 200, the upstream echo shows x-org-id, x-account-id, x-key-id ...",
             f"  curl -s localhost:{port}/v1/agents -H 'Authorization: Bearer {DEMO_KEY}'", "",
             "  # the same key as x-api-key",
             f"  curl -s localhost:{port}/v1/agents -H 'x-api-key: {DEMO_KEY}'", "",
             "  # a bad key: 401 invalid_api_key",
             f"  curl -si localhost:{port}/v1/agents -H 'Authorization: Bearer sk_live_acme_NotARealKey'", "",
             "  # a revoked key: 403 revoked_api_key",
             f"  curl -si localhost:{port}/v1/agents -H 'x-api-key: {REVOKED_KEY}'", "",
             "  # a public route: no credential needed, spoofed identity headers are stripped",
             f"  curl -s localhost:{port}/api/accounts -H 'x-org-id: spoofed'", ""]
    token = demo_jwt(env.get("EDGE_AUTH_DEMO_JWT_SECRET", ""), policy)
    if token and env.get("EDGE_AUTH_DEMO_JWT_SECRET") == DEMO_VALUES["EDGE_AUTH_DEMO_JWT_SECRET"]:
        lines += ["  # the JWT-only route, with a token of the demo provider (HS256, k_env)",
                  f"  curl -s -X POST localhost:{port}/api/v1/api-keys -H 'Authorization: Bearer {token}'", ""]
    lines += ["  # a key from the key server (edge-auth keys serve, serving envoy/keyset.json):",
              f"  curl -s localhost:{port}/v1/agents -H 'x-api-key: {SERVED_KEY}'",
              "  # revoke it without touching Envoy: add \"key_served\" to \"revoked\" in",
              "  # envoy/keyset.json, and within milliseconds the same curl answers 403.", "",
              "  # counters, per-route denials as labels, and the key-set gauges",
              f"  curl -s 127.0.0.1:{admin_port}/stats/prometheus | grep edge_auth_", ""]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default=str(DEMO_POLICY))
    parser.add_argument("--port", type=int, default=10000)
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--upstream-port", type=int, default=8081)
    parser.add_argument("--keys-port", type=int, default=8083)
    args = parser.parse_args()
    policy_path = Path(args.policy)

    stop = threading.Event()
    # Installed explicitly: a shell starting us in the background ignores
    # SIGINT, and Python keeps an ignored SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    try:
        text = policy_path.read_text()
        policy = json.loads(text)
    except (OSError, ValueError) as e:
        sys.exit(f"run_local: {policy_path}: {e}")
    names = secret_variables(policy)
    env, demo_names = secret_environment(names)
    ok, why = policy_check(policy_path, env)
    if not ok:
        sys.exit(f"run_local: {policy_path} is not a valid policy:\n{why}")

    upstream = Upstream(args.upstream_port).start()
    # The `keyserver` cluster's key server: it holds the filter's fetch open
    # until envoy/keyset.json changes (a long poll).
    keys_serve = subprocess.Popen(
        [str(CLI), "keys", "serve", "--file", str(ROOT / "envoy/keyset.json"),
         "--listen", f"127.0.0.1:{args.keys_port}"],
        cwd=ROOT, start_new_session=True,
    )
    workdir = tempfile.TemporaryDirectory(prefix="edge-auth-run-")
    envoy_config = DynamicEnvoy(workdir.name, args.port, args.admin_port, args.upstream_port, args.keys_port)
    envoy_config.write(text, names)
    envoy_bin = Path(sys.prefix) / "bin/envoy"
    envoy = subprocess.Popen(
        [str(envoy_bin), "-c", str(envoy_config.bootstrap), "--concurrency", "2", "-l", "warning",
         "--component-log-level", "wasm:info", "--disable-hot-restart"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE,
        # Envoy is stopped by us (SIGTERM), not by the terminal's SIGINT.
        start_new_session=True,
    )
    tail = LogTail(envoy.stderr)
    tail.start()
    try:
        while not stop.is_set() and envoy.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{args.admin_port}/ready", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        if envoy.poll() is not None:
            sys.exit(f"run_local: envoy exited with {envoy.returncode}")
        print("\n" + banner(args, policy_path, policy, env, demo_names), flush=True)
        watch(policy_path, text, names, env, envoy_config, envoy, tail, stop)
    finally:
        if envoy.poll() is None:
            envoy.terminate()
            try:
                envoy.wait(10)
            except subprocess.TimeoutExpired:
                envoy.kill()
                envoy.wait()
        keys_serve.terminate()
        keys_serve.wait()
        upstream.shutdown()
        workdir.cleanup()
        print("run_local: stopped", flush=True)


def watch(policy_path, applied, names, env, envoy_config, envoy, tail, stop):
    """Applies each new version of the policy file until told to stop."""
    seen = applied
    while not stop.wait(POLL_S):
        if envoy.poll() is not None:
            sys.exit(f"run_local: envoy exited with {envoy.returncode}")
        try:
            text = policy_path.read_text()
        except OSError:
            continue
        if text == seen:
            continue
        seen = text
        print(f"run_local: {policy_path} changed", flush=True)
        try:
            new_names = secret_variables(json.loads(text))
        except ValueError:
            new_names = names
        missing = [n for n in new_names if n not in env]
        if missing:
            print(f"run_local: refused, keeping the last good policy: it names {', '.join(missing)}, which "
                  "Envoy was not started with; restart make run to give them demo values", flush=True)
            continue
        ok, why = policy_check(policy_path, env)
        if not ok:
            print(f"run_local: refused, keeping the last good policy:\n{why}", flush=True)
            continue
        before = envoy_config.lds_counters()
        tail.last_config_error = None
        envoy_config.write(text, new_names)
        verdict = envoy_config.wait_for_update(before)
        if verdict == "applied":
            print("run_local: policy applied", flush=True)
        elif verdict == "rejected":
            reason = tail.last_config_error or "see Envoy's log above"
            print(f"run_local: Envoy refused the policy, keeping the last good one: {reason}", flush=True)
        else:
            print("run_local: Envoy has not taken the policy yet", flush=True)


if __name__ == "__main__":
    main()
