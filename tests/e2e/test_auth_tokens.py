"""Token attacks through the gateway of the running suite: each one gets 401 (whether the
gateway or the users service refuses it). The forged tokens that need a valid signature are
signed with the suite's own key file, as an attacker who somehow had it could not do better."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventpost.auth import AUDIENCE, ISSUER
from services.users.keys import KeyRing


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(sub: str, **changes) -> dict:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "role": "user", "iat": now}
    claims["exp"] = now + 600
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def test_token_attacks_get_401(suite):
    acct = suite.sign_up()
    token = suite.login(acct["username"], acct["password"])
    uid = acct["user"]["id"]
    ring = KeyRing(suite.data_dir / "keys" / "users-signing.json")
    jwk = suite.client.get("/v1/auth/jwks").json()["keys"][0]
    kid = jwk["kid"]

    def unsigned(header: dict, claims: dict) -> str:
        return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"

    def hs256(secret: bytes) -> str:
        head = unsigned({"alg": "HS256", "typ": "JWT", "kid": kid}, _claims(uid))
        return f"{head}.{_b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())}"

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered = _b64(json.dumps({**claims, "role": "admin"}).encode())
    stranger = Ed25519PrivateKey.generate()
    attacks = {
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": kid}, _claims(uid)) + ".",
        "HS256 signed with the public key": hs256(base64.urlsafe_b64decode(jwk["x"] + "==")),
        "HS256 signed with the JWK x text": hs256(jwk["x"].encode()),
        "expired": ring.sign(_claims(uid, exp=int(time.time()) - 10)),
        "no exp": ring.sign(_claims(uid, exp=None)),
        "wrong iss": ring.sign(_claims(uid, iss="evil-issuer")),
        "wrong aud": ring.sign(_claims(uid, aud="another-api")),
        "unknown kid": jwt.encode(
            _claims(uid), stranger, algorithm="EdDSA", headers={"kid": "unknown-kid"}
        ),
        "known kid, other key": jwt.encode(
            _claims(uid), stranger, algorithm="EdDSA", headers={"kid": kid}
        ),
        "tampered payload": f"{header}.{tampered}.{signature}",
    }
    for name, forged in attacks.items():
        resp = suite.client.get("/v1/users/me", headers={"Authorization": f"Bearer {forged}"})
        assert resp.status_code == 401, (name, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.headers["www-authenticate"].startswith("Bearer")
    # The genuine token still works and still says "user".
    me = suite.client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["role"] == "user"


def test_a_deleted_accounts_token_gets_401_at_once(suite):
    acct = suite.sign_up()
    token = suite.login(acct["username"], acct["password"])
    auth = {"Authorization": f"Bearer {token}"}
    assert suite.client.delete("/v1/users/me", headers=auth).status_code == 204
    for method, path in (("GET", "/v1/users/me"), ("DELETE", "/v1/users/me")):
        resp = suite.client.request(method, path, headers=auth)
        assert resp.status_code == 401, resp.text
