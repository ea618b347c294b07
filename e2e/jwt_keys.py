"""Signing keys for the end-to-end tests and the JWKs edge-auth gets for them."""

import base64
import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://auth.example.com"
AUDIENCE = "api"
HS_SECRET = b"e2e-hs256-secret-0123456789abcdef0123456789"


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n):
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwks():
    rsa_pub = RSA_KEY.public_key().public_numbers()
    ec_pub = EC_KEY.public_key().public_numbers()
    return {"keys": [
        {"kty": "oct", "kid": "hs", "k": b64(HS_SECRET)},
        {"kty": "RSA", "kid": "rs", "alg": "RS256", "n": _int(rsa_pub.n), "e": _int(rsa_pub.e)},
        {"kty": "EC", "kid": "es", "crv": "P-256",
         "x": b64(ec_pub.x.to_bytes(32, "big")), "y": b64(ec_pub.y.to_bytes(32, "big"))},
    ]}


def claims(**overrides):
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "nbf": now, "exp": now + 600,
            "org_id": "org_42", "accounts": ["acme", "beta", "kataven-admin"], "scope": "agents:read tasks:execute"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def sign(alg="RS256", kid=None, headers=None, **overrides):
    key = {"RS256": RSA_KEY, "ES256": EC_KEY, "HS256": HS_SECRET}[alg]
    kid = kid if kid is not None else {"RS256": "rs", "ES256": "es", "HS256": "hs"}[alg]
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid, **(headers or {})})


def unsigned(alg="none", **overrides):
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims(**overrides)).encode())}."
