"""JWKS fetched from an identity provider's endpoint, end to end."""

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from harness import wait_for
from jwt_keys import ISSUER, b64, claims, jwks
from key_server import KeyServer, add_cluster

PATH = "/.well-known/jwks.json"
ROTATED = ec.generate_private_key(ec.SECP256R1())


def rotated_jwk():
    numbers = ROTATED.public_key().public_numbers()
    return {"kty": "EC", "kid": "es-2027", "crv": "P-256",
            "x": b64(numbers.x.to_bytes(32, "big")), "y": b64(numbers.y.to_bytes(32, "big"))}


def token(key, kid, **overrides):
    return jwt.encode(claims(**overrides), key, algorithm="ES256", headers={"kid": kid})


@pytest.fixture(scope="module")
def server():
    srv = KeyServer().start()
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def envoy(envoy_factory, server):
    server.mode = "error"  # the IdP is down when Envoy starts
    policy = {"jwt": {"providers": [{
        "name": "idp", "issuer": ISSUER, "audiences": ["api"], "algorithms": ["ES256", "RS256"],
        "jwks_source": {"cluster": "idp", "path": PATH, "refresh_s": 300},
    }]}}
    return envoy_factory(policy, edit=add_cluster("idp", server.port))



def call(envoy, tok):
    r = envoy.request("/x", [("authorization", f"Bearer {tok}")])
    return r.status, r.code


def test_a_jwks_that_never_loaded_gives_503(envoy):
    from jwt_keys import EC_KEY
    assert call(envoy, token(EC_KEY, "es")) == (503, "auth_unavailable")


def test_the_jwks_loads_and_rotated_keys_are_fetched_early(envoy, server):
    from jwt_keys import EC_KEY
    server.publish(PATH, jwks())
    server.mode = "ok"
    # The first fetch retries within 2 s of the failure.
    wait_for(lambda: call(envoy, token(EC_KEY, "es", sub="a")) == (200, None), 5)
    # The IdP rotates in a new key; the first token with it triggers one early refetch.
    server.publish(PATH, {"keys": jwks()["keys"] + [rotated_jwk()]})
    rotated = token(ROTATED, "es-2027", sub="b")
    assert call(envoy, rotated) == (401, "invalid_token")
    wait_for(lambda: call(envoy, rotated) == (200, None), 3)


def test_a_failing_idp_keeps_the_last_jwks(envoy, server):
    from jwt_keys import EC_KEY
    before = envoy.stats().get("wasmcustom.edge_auth.jwks.refresh_failed", 0)
    server.mode = "garbage"
    switched = time.monotonic()
    try:
        # Unknown kids ask for early refetches (at most one per 10 s): wait
        # until one has really reached the failing IdP.
        wait_for(lambda: call(envoy, token(EC_KEY, "unknown-kid")) and server.hits_on(PATH, switched), 15)
        wait_for(lambda: envoy.stats().get("wasmcustom.edge_auth.jwks.refresh_failed", 0) > before, 3)
        assert call(envoy, token(ROTATED, "es-2027", sub="c")) == (200, None)
        assert call(envoy, token(EC_KEY, "es", sub="d")) == (200, None)
    finally:
        server.mode = "ok"


def test_a_key_removed_from_the_jwks_stops_admitting_cached_tokens(envoy_factory, server):
    from jwt_keys import EC_KEY
    path = "/fast/jwks.json"
    server.publish(path, jwks())
    policy = {"jwt": {"providers": [{
        "name": "idp", "issuer": ISSUER, "audiences": ["api"], "algorithms": ["ES256"],
        "jwks_source": {"cluster": "idp", "path": path, "refresh_s": 0.3},
    }]}}
    envoy = envoy_factory(policy, edit=add_cluster("idp", server.port))
    cached = token(EC_KEY, "es", sub="cached")
    wait_for(lambda: call(envoy, cached) == (200, None), 5)
    assert call(envoy, cached) == (200, None)  # now in every worker's cache it reached
    # The IdP rotates the key out (say it leaked).
    server.publish(path, {"keys": [k for k in jwks()["keys"] if k.get("kid") != "es"] + [rotated_jwk()]})
    wait_for(lambda: all(call(envoy, cached) == (401, "invalid_token") for _ in range(6)), 5)
