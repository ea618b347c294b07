"""Shadow mode, and policies Envoy must refuse, end to end."""

import subprocess
import uuid

import pytest

from harness import CLI, TEST_PEPPER, key_hash

GOOD = "sk_live_acme_ShadowGood01"
HASH = "ab" * 32


@pytest.fixture(scope="module")
def shadow(envoy_factory):
    return envoy_factory({
        "mode": "shadow",
        "api_keys": {"keys": [{"id": "key_s", "hash": key_hash(GOOD), "org": "o1", "account": "acme"}]},
        "routes": [{"prefix": "/v1/agents", "scopes": ["agents:read"]}],
    })


def test_shadow_forwards_would_be_denials_with_the_verdict(shadow):
    r = shadow.request("/v1/tasks", [("x-api-key", "sk_live_acme_NotAKey"), ("x-org-id", "spoofed")])
    assert r.status == 200, r
    seen = r.upstream_headers
    assert seen["x-edge-auth-shadow"] == "401 invalid_api_key"
    assert "x-org-id" not in seen and "x-auth-method" not in seen
    assert shadow.request("/v1/tasks").upstream_headers["x-edge-auth-shadow"] == "401 missing_authentication"
    assert shadow.request("/v1/agents", [("x-api-key", GOOD)]).upstream_headers["x-edge-auth-shadow"] == \
        "403 insufficient_scope"


def test_shadow_allows_good_keys_and_strips_client_verdicts(shadow):
    r = shadow.request("/v1/tasks", [("x-api-key", GOOD), ("x-edge-auth-shadow", "200 forged")])
    assert r.status == 200, r
    assert "x-edge-auth-shadow" not in r.upstream_headers
    assert r.upstream_headers["x-account-id"] == "acme"


def test_shadow_denials_are_counted_and_logged_apart(shadow):
    before = shadow.stats()
    shadow.request("/v1/tasks", [("x-api-key", "nope-nope")])
    after = shadow.stats()
    name = "wasmcustom.edge_auth.shadow_denied.invalid_api_key"
    assert after[name] - before.get(name, 0) == 1
    assert after.get("wasmcustom.edge_auth.denied.invalid_api_key", 0) == 0
    assert "shadow-deny invalid_api_key" in shadow.wait_for_log("shadow-deny")


def key_record(**fields):
    return {"id": "k1", "hash": HASH, "org": "o", "account": "acme", **fields}


# Policies Envoy must refuse, with the line the filter logs for each.
BAD_POLICIES = [
    ({"api_keys": {"keys": [key_record()]}, "routez": []}, "routez: unknown field `routez`"),
    ({"api_keys": {"keys": [key_record(), key_record(id="k2", hash="xyz")]}},
     "api_keys.keys[1].hash: expected 64 hex characters"),
    ({"api_keys": {"keys": [key_record()]}, "account_pattern": "[a-z"}, "account_pattern: invalid regular expression"),
    ({"api_keys": {"keys": [key_record(plan="gold")]}, "rate_limits": {"plans": {}}},
     "api_keys.keys[0].plan: unknown plan 'gold'"),
    ({"api_keys": {"keys": [key_record()]}, "mode": "audit"}, "mode: unknown variant `audit`"),
    ("{not json", "key must be a string"),
]


@pytest.mark.parametrize("doc,message", BAD_POLICIES, ids=[m.split(":")[0] for _, m in BAD_POLICIES])
def test_envoy_refuses_a_bad_policy_naming_the_field(envoy_factory, upstream, doc, message):
    envoy = envoy_factory(doc, ready=False)
    assert envoy.wait_exit() not in (None, 0), "envoy started with a bad policy"
    assert f"edge-auth: config: {message}" in envoy.wait_for_log("edge-auth: config:")


def test_envoy_refuses_to_start_without_the_pepper(envoy_factory, upstream):
    envoy = envoy_factory({"api_keys": {"keys": [key_record()]}}, ready=False, pepper=None)
    assert envoy.wait_exit() not in (None, 0)
    assert "edge-auth: config: api_keys.pepper_env: environment variable EDGE_AUTH_PEPPER is missing or empty" \
        in envoy.wait_for_log("edge-auth: config:")


@pytest.mark.parametrize("doc,message", BAD_POLICIES[:2], ids=["unknown-field", "bad-hash"])
def test_policy_check_prints_the_filters_message(tmp_path, doc, message):
    import json
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(doc))
    out = subprocess.run([str(CLI), "policy", "check", str(path)], capture_output=True, text=True,
                         env={"EDGE_AUTH_PEPPER": TEST_PEPPER})
    assert out.returncode == 1
    assert f"edge-auth: config: {message}" in out.stderr
