"""API-key authentication end to end: real Envoy, the built module, a real upstream."""

import json
import subprocess
import uuid

import pytest

from harness import CLI, TEST_PEPPER, key_hash

GOOD = "sk_live_acme_GoodSecret0001"
OPAQUE = "opaque-legacy-key-0001"
EXPIRED = "sk_live_acme_ExpiredSecret01"
REVOKED = "sk_live_acme_RevokedSecret01"
ADMIN = "sk_live_kataven-admin_AdminSecret01"
IDENTITY_HEADERS = ["x-org-id", "x-account-id", "x-key-id", "x-auth-subject", "x-auth-scopes", "x-auth-method"]


def minted_key():
    """A key minted by the CLI, as an operator would."""
    out = subprocess.run(
        [str(CLI), "key", "new", "--account", "big_co", "--org", "org_9", "--scopes", "tasks:execute", "--json"],
        capture_output=True,
        text=True,
        env={"EDGE_AUTH_PEPPER": TEST_PEPPER},
        check=True,
    )
    return json.loads(out.stdout)


MINTED = minted_key()


def policy(**overrides):
    keys = [
        {"id": "key_good", "hash": key_hash(GOOD), "org": "org_42", "account": "acme",
         "scopes": ["agents:read", "tasks:execute"]},
        {"id": "key_opaque", "hash": key_hash(OPAQUE), "org": "org_7", "account": "legacy-co"},
        {"id": "key_expired", "hash": key_hash(EXPIRED), "org": "org_42", "account": "acme",
         "expires_at": "2020-01-01T00:00:00Z"},
        {"id": "key_revoked", "hash": key_hash(REVOKED), "org": "org_42", "account": "acme"},
        {"id": "key_admin", "hash": key_hash(ADMIN), "org": "org_0", "account": "kataven-admin",
         "scopes": ["admin"]},
        MINTED["record"],
    ]
    doc = {
        "reserved_accounts": ["kataven-admin"],
        "api_keys": {"keys": keys, "revoked": ["key_revoked"]},
        "routes": [
            {"prefix": "/public", "auth": "none"},
            {"prefix": "/optional", "auth": "optional"},
            {"prefix": "/jwt-only", "credentials": ["jwt"]},
            {"prefix": "/v1/agents", "methods": ["GET"], "scopes": ["agents:read"]},
            {"prefix": "/v1/admin", "allow_reserved": True, "scopes": ["admin"]},
        ],
    }
    doc.update(overrides)
    return doc


@pytest.fixture(scope="module")
def envoy(envoy_factory):
    return envoy_factory(policy())


def reached_upstream(upstream, marker):
    return [r for r in upstream.requests() if marker in r[1]]


def unique(path):
    return f"{path}?probe={uuid.uuid4().hex}"


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", f"Bearer {GOOD}")],
        [("authorization", f"bearer   {GOOD}  ")],
        [("x-api-key", GOOD)],
        [("Authorization", f"UserKey {GOOD}")],
    ],
    ids=["bearer", "bearer-lowercase-spaces", "x-api-key", "userkey"],
)
def test_good_key_reaches_upstream_with_its_identity(envoy, headers):
    r = envoy.request("/v1/tasks", headers)
    assert r.status == 200, r
    seen = r.upstream_headers
    assert seen["x-org-id"] == "org_42"
    assert seen["x-account-id"] == "acme"
    assert seen["x-key-id"] == "key_good"
    assert seen["x-auth-subject"] == "key_good"
    assert seen["x-auth-scopes"] == "agents:read tasks:execute"
    assert seen["x-auth-method"] == "api_key"
    # Credentials are forwarded unless strip_credentials is set.
    assert "authorization" in seen or "x-api-key" in seen


def test_opaque_and_cli_minted_keys(envoy):
    r = envoy.request("/v1/tasks", [("x-api-key", OPAQUE)])
    assert r.status == 200, r
    assert r.upstream_headers["x-account-id"] == "legacy-co"
    assert "x-auth-scopes" not in r.upstream_headers  # no scopes: header absent, not empty

    r = envoy.request("/v1/tasks", [("authorization", f"Bearer {MINTED['key']}")])
    assert r.status == 200, r
    assert r.upstream_headers["x-key-id"] == MINTED["record"]["id"]
    assert r.upstream_headers["x-account-id"] == "big_co"


# (path, headers, status, code) for every API-key row of the decision table.
DENIALS = [
    # 1: malformed or ambiguous
    ("/v1/tasks", [("authorization", f"Bearer {GOOD}"), ("x-api-key", OPAQUE)], 400, "malformed_credentials"),
    ("/v1/tasks", [("x-api-key", GOOD), ("x-api-key", GOOD)], 400, "malformed_credentials"),
    ("/v1/tasks", [("authorization", f"Bearer {GOOD}"), ("authorization", f"Bearer {GOOD}")], 400,
     "malformed_credentials"),
    ("/v1/tasks", [("x-api-key", f"{GOOD},{OPAQUE}")], 400, "malformed_credentials"),
    ("/v1/tasks", [("authorization", "Basic dXNlcjpwYXNz")], 400, "malformed_credentials"),
    ("/v1/tasks", [("authorization", "Bearer opaque-token")], 400, "malformed_credentials"),
    ("/v1/tasks", [("authorization", "Bearer sk_live_acme")], 400, "malformed_credentials"),
    ("/v1/tasks", [("x-api-key", b"sk_live_acme_\xff\xfe")], 400, "malformed_credentials"),
    ("/v1/tasks", [("x-api-key", "k" * 8193)], 400, "malformed_credentials"),
    ("/v1/tasks", [("x-api-key", "")], 400, "malformed_credentials"),
    # 2: missing on a required route (including the default route)
    ("/v1/tasks", [], 401, "missing_authentication"),
    ("/v1/agents", [], 401, "missing_authentication"),
    # 3: account in the key prefix fails the pattern
    ("/v1/tasks", [("authorization", "Bearer sk_live_ACME_GoodSecret0001")], 400, "invalid_account"),
    ("/v1/tasks", [("x-api-key", "sk_live_acme!_GoodSecret0001")], 400, "invalid_account"),
    # 5: unknown key, or a known secret under another account's prefix
    ("/v1/tasks", [("authorization", "Bearer sk_live_acme_WrongSecret")], 401, "invalid_api_key"),
    ("/v1/tasks", [("x-api-key", "unknown-opaque")], 401, "invalid_api_key"),
    ("/v1/tasks", [("authorization", "Bearer sk_test_acme_GoodSecret0001")], 401, "invalid_api_key"),
    # 6, 7
    ("/v1/tasks", [("authorization", f"Bearer {EXPIRED}")], 401, "expired_api_key"),
    ("/v1/tasks", [("authorization", f"Bearer {REVOKED}")], 403, "revoked_api_key"),
    # 8: publishable keys
    ("/v1/tasks", [("authorization", "Bearer pk_live_acme_Publishable1")], 401, "invalid_api_key"),
    ("/v1/tasks", [("x-api-key", "pk_test_acme_Publishable1")], 401, "invalid_api_key"),
    # 12: reserved account off an allow_reserved route
    ("/v1/tasks", [("authorization", f"Bearer {ADMIN}")], 403, "account_forbidden"),
    # 13: credential kind not allowed by the route
    ("/jwt-only/x", [("authorization", f"Bearer {GOOD}")], 403, "credential_not_allowed"),
    # 14: missing scope
    ("/v1/agents", [("x-api-key", OPAQUE)], 403, "insufficient_scope"),
    ("/v1/admin/users", [("x-api-key", GOOD)], 403, "insufficient_scope"),
    # Route dodging with path tricks still meets the scope check (Envoy and the filter normalise).
    ("/public/../v1/agents", [("x-api-key", OPAQUE)], 403, "insufficient_scope"),
    ("//v1//agents", [("x-api-key", OPAQUE)], 403, "insufficient_scope"),
]


@pytest.mark.parametrize("path,headers,status,code", DENIALS, ids=[f"{c}-{i}" for i, (_, _, _, c) in enumerate(DENIALS)])
def test_denials_answer_per_the_decision_table_and_never_reach_upstream(envoy, upstream, path, headers, status, code):
    marker = uuid.uuid4().hex
    r = envoy.request(f"{path}?probe={marker}", headers)
    assert (r.status, r.code) == (status, code), r
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    if status == 401:
        assert r.headers["www-authenticate"].startswith('Bearer realm="edge-auth"')
    else:
        assert "www-authenticate" not in r.headers
    for _, value in headers:
        secret = value if isinstance(value, str) else value.decode("latin-1")
        if len(secret) > 12:
            assert secret.split()[-1] not in r.body.decode(), "a denial echoed the credential"
    assert reached_upstream(upstream, marker) == []


def test_allowed_routes_and_scopes(envoy):
    assert envoy.request("/v1/agents", [("x-api-key", GOOD)]).status == 200
    r = envoy.request("/v1/admin/users", [("authorization", f"Bearer {ADMIN}")])
    assert r.status == 200, r
    assert r.upstream_headers["x-account-id"] == "kataven-admin"
    # The route's method list: POST /v1/agents is not the GET-only scoped route.
    assert envoy.request("/v1/agents", [("x-api-key", OPAQUE)], method="POST").status == 200


def test_public_route_never_inspects_but_strips_identity(envoy):
    spoofed = [(name, "spoofed") for name in IDENTITY_HEADERS] + [("x-edge-auth-shadow", "200 ok")]
    r = envoy.request("/public/info", spoofed + [("x-api-key", "garbage"), ("x-api-key", "more")])
    assert r.status == 200, r
    seen = r.upstream_headers
    for name in IDENTITY_HEADERS + ["x-edge-auth-shadow"]:
        assert name not in seen, name
    # A path that merely starts with the public prefix is not public.
    assert envoy.request("/publicity", []).code == "missing_authentication"


def test_client_identity_headers_are_replaced_never_appended(envoy, upstream):
    marker = uuid.uuid4().hex
    spoofed = [(name, "spoofed") for name in IDENTITY_HEADERS]
    r = envoy.request(f"/v1/tasks?probe={marker}", spoofed + [("X-Org-Id", "evil"), ("x-api-key", OPAQUE)])
    assert r.status == 200, r
    [(_, _, headers)] = reached_upstream(upstream, marker)
    values = {}
    for name, value in headers:
        values.setdefault(name, []).append(value)
    assert values["x-org-id"] == ["org_7"]
    assert values["x-account-id"] == ["legacy-co"]
    assert values["x-auth-method"] == ["api_key"]
    assert "x-auth-scopes" not in values  # the key has none; the spoofed one is gone


def test_optional_route(envoy):
    r = envoy.request("/optional", [("x-account-id", "spoofed")])
    assert r.status == 200 and "x-account-id" not in r.upstream_headers
    r = envoy.request("/optional", [("x-api-key", GOOD)])
    assert r.status == 200 and r.upstream_headers["x-account-id"] == "acme"
    assert envoy.request("/optional", [("x-api-key", "bad-key")]).code == "invalid_api_key"


def test_counters_and_denial_logs(envoy):
    before = envoy.stats()
    envoy.request("/v1/tasks", [("authorization", f"Bearer {REVOKED}")])
    envoy.request("/v1/tasks", [("x-api-key", GOOD)])
    after = envoy.stats()

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)

    assert delta("wasmcustom.edge_auth.denied.revoked_api_key") == 1
    assert delta("wasmcustom.edge_auth.allowed") == 1
    log = envoy.wait_for_log("key=key_revoked")
    assert "deny revoked_api_key" in log and "key=key_revoked" in log
    for secret in ["RevokedSecret01", "GoodSecret0001", "ExpiredSecret01", "WrongSecret"]:
        assert secret not in log


def test_strip_credentials(envoy_factory):
    stripping = envoy_factory(policy(strip_credentials=True))
    r = stripping.request("/v1/tasks", [("authorization", f"Bearer {GOOD}")])
    assert r.status == 200, r
    assert "authorization" not in r.upstream_headers and r.upstream_headers["x-key-id"] == "key_good"
    r = stripping.request("/v1/tasks", [("x-api-key", OPAQUE)])
    assert "x-api-key" not in r.upstream_headers
    # Public routes are never inspected, so nothing is stripped there.
    assert stripping.request("/public", [("x-api-key", "anything")]).upstream_headers["x-api-key"] == "anything"
