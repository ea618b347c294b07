"""JWT bearer authentication end to end, with tokens these tests sign themselves."""

import time
import uuid

import pytest

from harness import key_hash
from jwt_keys import HS_SECRET, ISSUER, jwks, sign, unsigned, b64

API_KEY = "sk_live_acme_JwtSuiteKey01"


def policy():
    return {
        "reserved_accounts": ["kataven-admin"],
        "api_keys": {"keys": [{"id": "key_1", "hash": key_hash(API_KEY), "org": "o", "account": "acme"}]},
        "jwt": {"providers": [{
            "name": "console", "issuer": ISSUER, "audiences": ["api"],
            "algorithms": ["RS256", "ES256", "HS256"], "jwks": jwks(),
            "account_header": "x-account-id", "clock_skew_s": 1,
        }]},
        "rate_limits": {"plans": {"jwt": [{"name": "hour", "requests": 3, "per_s": 3600}]}, "jwt_plan": "jwt"},
        "routes": [
            {"prefix": "/api/v1/api-keys", "credentials": ["jwt"]},
            {"prefix": "/keys-only", "credentials": ["api_key"]},
            {"prefix": "/v1/agents", "scopes": ["agents:read"]},
            {"prefix": "/v1/admin", "allow_reserved": True, "scopes": ["admin"]},
        ],
    }


@pytest.fixture(scope="module")
def envoy(envoy_factory):
    return envoy_factory(policy())


def call(envoy, token, account="acme", path="/v1/agents", extra=()):
    headers = [("authorization", f"Bearer {token}")]
    if account is not None:
        headers.append(("x-account-id", account))
    return envoy.request(path, headers + list(extra))


def unique_sub():
    return f"user-{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256"])
def test_valid_tokens_pass_with_their_identity(envoy, alg):
    sub = unique_sub()
    r = call(envoy, sign(alg, sub=sub), extra=[("x-org-id", "spoofed"), ("x-auth-method", "api_key")])
    assert r.status == 200, r
    seen = r.upstream_headers
    assert seen["x-org-id"] == "org_42"
    assert seen["x-account-id"] == "acme"
    assert seen["x-key-id"] == sub and seen["x-auth-subject"] == sub
    assert seen["x-auth-scopes"] == "agents:read tasks:execute"
    assert seen["x-auth-method"] == "jwt"


def test_a_repeated_token_is_served_from_the_cache_and_still_checked(envoy):
    token = sign("ES256", sub=unique_sub())
    assert [call(envoy, token).status for _ in range(2)] == [200, 200]
    # The cached token still goes through the account and route checks.
    assert call(envoy, token, account="other").code == "account_mismatch"
    assert call(envoy, token, path="/keys-only").code == "credential_not_allowed"


def test_a_cached_token_is_never_used_past_exp(envoy):
    token = sign("RS256", sub=unique_sub(), exp=int(time.time()) + 2)
    assert call(envoy, token).status == 200
    time.sleep(4)  # past exp plus the provider's 1 s skew
    r = call(envoy, token)
    assert (r.status, r.code) == (401, "expired_token"), r
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def forged_hs256(header_json, **overrides):
    import hashlib
    import hmac
    import json
    from jwt_keys import claims
    signing_input = f"{b64(header_json.encode())}.{b64(json.dumps(claims(**overrides)).encode())}"
    signature = hmac.new(HS_SECRET, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def rsa_confused():
    """HS256 keyed with the provider's RSA public key, naming the RSA key."""
    import hashlib
    import hmac
    import json
    from jwt_keys import RSA_KEY, claims
    from cryptography.hazmat.primitives import serialization
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': 'rs'}).encode())}.{b64(json.dumps(claims()).encode())}"
    return f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"


def now():
    return int(time.time())


# (name, token factory, account header, path, status, code)
CASES = [
    ("no-account-header", lambda: sign("RS256"), None, "/v1/agents", 400, "account_header_required"),
    ("bad-account", lambda: sign("RS256"), "ACME!", "/v1/agents", 400, "invalid_account"),
    ("alg-none", lambda: unsigned("none"), "acme", "/v1/agents", 401, "invalid_token"),
    ("alg-None", lambda: unsigned("None"), "acme", "/v1/agents", 401, "invalid_token"),
    ("alg-confusion", rsa_confused, "acme", "/v1/agents", 401, "invalid_token"),
    ("stripped-signature", lambda: sign("ES256").rsplit(".", 1)[0] + ".", "acme", "/v1/agents", 401, "invalid_token"),
    ("tampered-payload", lambda: (lambda t: t.split(".")[0] + "." + b64(b'{"iss":"' + ISSUER.encode()
                                  + b'","sub":"admin","exp":9999999999,"aud":"api"}') + "." + t.split(".")[2])(
        sign("RS256")), "acme", "/v1/agents", 401, "invalid_token"),
    ("unknown-kid", lambda: sign("RS256", kid="rotated-away"), "acme", "/v1/agents", 401, "invalid_token"),
    ("embedded-jwk", lambda: forged_hs256('{"alg":"HS256","kid":"hs","jwk":{"kty":"oct","k":"QUFB"}}'),
     "acme", "/v1/agents", 401, "invalid_token"),
    ("jku", lambda: forged_hs256('{"alg":"HS256","kid":"hs","jku":"http://127.0.0.1:1/jwks"}'),
     "acme", "/v1/agents", 401, "invalid_token"),
    ("crit", lambda: forged_hs256('{"alg":"HS256","kid":"hs","crit":["b64"],"b64":false}'),
     "acme", "/v1/agents", 401, "invalid_token"),
    ("duplicate-alg", lambda: forged_hs256('{"alg":"none","alg":"HS256","kid":"hs"}'),
     "acme", "/v1/agents", 401, "invalid_token"),
    ("wrong-issuer", lambda: sign("RS256", iss="https://evil.example"), "acme", "/v1/agents", 401, "invalid_token"),
    ("wrong-audience", lambda: sign("RS256", aud="other"), "acme", "/v1/agents", 401, "invalid_token"),
    ("not-yet-valid", lambda: sign("RS256", nbf=now() + 600), "acme", "/v1/agents", 401, "invalid_token"),
    ("no-exp", lambda: sign("RS256", exp=None), "acme", "/v1/agents", 401, "invalid_token"),
    ("string-exp", lambda: sign("RS256", exp="9999999999"), "acme", "/v1/agents", 401, "invalid_token"),
    ("expired", lambda: sign("RS256", exp=now() - 30), "acme", "/v1/agents", 401, "expired_token"),
    ("expired-and-wrong-aud", lambda: sign("RS256", exp=now() - 30, aud="other"), "acme", "/v1/agents", 401,
     "invalid_token"),
    ("account-not-granted", lambda: sign("ES256"), "zeta", "/v1/agents", 403, "account_mismatch"),
    ("no-accounts-claim", lambda: sign("ES256", accounts=None), "acme", "/v1/agents", 403, "account_mismatch"),
    ("reserved-account", lambda: sign("ES256"), "kataven-admin", "/v1/agents", 403, "account_forbidden"),
    ("jwt-on-keys-only-route", lambda: sign("ES256"), "acme", "/keys-only", 403, "credential_not_allowed"),
    ("missing-scope", lambda: sign("ES256", scope="tasks:execute"), "acme", "/v1/agents", 403, "insufficient_scope"),
]


@pytest.mark.parametrize("name,make,account,path,status,code", CASES, ids=[c[0] for c in CASES])
def test_each_attack_and_failing_claim_gets_its_code_and_never_reaches_upstream(
        envoy, upstream, name, make, account, path, status, code):
    marker = uuid.uuid4().hex
    r = call(envoy, make(), account=account, path=f"{path}?probe={marker}")
    assert (r.status, r.code) == (status, code), r
    assert [q for q in upstream.requests() if marker in q[1]] == []


def test_a_repeated_account_header_names_no_single_account(envoy, upstream):
    marker = uuid.uuid4().hex
    r = call(envoy, sign("RS256"), path=f"/v1/agents?probe={marker}", extra=[("x-account-id", "acme")])
    assert (r.status, r.code) == (400, "invalid_account"), r
    assert [q for q in upstream.requests() if marker in q[1]] == []


def test_routes_and_reserved_accounts_for_jwt_callers(envoy):
    assert call(envoy, sign("ES256", sub=unique_sub()), path="/api/v1/api-keys").status == 200
    admin = sign("ES256", sub=unique_sub(), scope="admin")
    r = call(envoy, admin, account="kataven-admin", path="/v1/admin/users")
    assert r.status == 200 and r.upstream_headers["x-account-id"] == "kataven-admin"
    # API keys on the JWT-only route are refused the other way round.
    r = envoy.request("/api/v1/api-keys", [("x-api-key", API_KEY)])
    assert r.code == "credential_not_allowed"


def test_jwt_callers_are_rate_limited_per_issuer_and_subject(envoy):
    sub = unique_sub()
    statuses = [call(envoy, sign("ES256", sub=sub)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # Another subject has its own bucket, whatever token it uses.
    assert call(envoy, sign("RS256", sub=unique_sub())).status == 200
