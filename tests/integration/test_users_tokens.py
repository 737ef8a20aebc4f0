"""Access tokens of the users service: the key file, rotation, JWKS, and every token attack
answered 401 (in-process over a real SQLite store)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventpost.auth import AUDIENCE, ISSUER, InvalidToken, KeySet
from eventpost.settings import Settings
from services.users.keys import KeyRing, default_key_path, read_key_file, rotate_key_file
from tests.integration.test_users_api import assert_problem, make_service

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def svc(tmp_path: Path):
    service = make_service(tmp_path)
    yield service
    service.store.close()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, claims: dict) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


def good_claims(sub: str, **changes) -> dict:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "role": "user",
        "iat": now,
        "exp": now + 600,
        "jti": "j1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def me_status(svc, token: str) -> int:
    resp = svc.call("GET", "/v1/users/me", token)
    if resp.status_code == 401:
        assert_problem(resp, 401)
        assert resp.headers["www-authenticate"].startswith("Bearer")
    return resp.status_code


def test_a_well_formed_token_signed_by_the_ring_is_accepted(svc):
    user, _ = svc.user_with_token("alice")
    assert me_status(svc, svc.keys.sign(good_claims(user["id"]))) == 200


def test_token_attacks_are_refused(svc):
    user, token = svc.user_with_token("alice")
    uid = user["id"]
    kid = svc.keys.signing_kid
    public = svc.keys.jwks()["keys"][0]
    raw_public = base64.urlsafe_b64decode(public["x"] + "==")
    pem_public = jwt.PyJWK.from_dict(public).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def hs256(secret: bytes) -> str:
        head = unsigned({"alg": "HS256", "typ": "JWT", "kid": kid}, good_claims(uid))
        sig = hmac.new(secret, head.encode(), hashlib.sha256).digest()
        return f"{head}.{b64(sig)}"

    other = Ed25519PrivateKey.generate()
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered_payload = b64(json.dumps({**claims, "role": "admin"}).encode())

    attacks = {
        "alg none": unsigned({"alg": "none", "kid": kid}, good_claims(uid)) + ".",
        "alg None with signature": unsigned({"alg": "None", "kid": kid}, good_claims(uid))
        + "."
        + signature,
        "HS256 with the raw public key": hs256(raw_public),
        "HS256 with the JWK x": hs256(public["x"].encode()),
        "HS256 with the PEM public key": hs256(pem_public),
        "expired": svc.keys.sign(good_claims(uid, exp=int(time.time()) - 5)),
        "without exp": svc.keys.sign(good_claims(uid, exp=None)),
        "without iat": svc.keys.sign(good_claims(uid, iat=None)),
        "wrong iss": svc.keys.sign(good_claims(uid, iss="someone-else")),
        "wrong aud": svc.keys.sign(good_claims(uid, aud="another-api")),
        "no aud": svc.keys.sign(good_claims(uid, aud=None)),
        "unknown kid": jwt.encode(
            good_claims(uid), other, algorithm="EdDSA", headers={"kid": "not-a-known-kid"}
        ),
        "known kid, other key": jwt.encode(
            good_claims(uid), other, algorithm="EdDSA", headers={"kid": kid}
        ),
        "no kid": jwt.encode(good_claims(uid), other, algorithm="EdDSA"),
        "tampered payload": f"{header}.{tampered_payload}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "bad role": svc.keys.sign(good_claims(uid, role="root")),
        "deleted or unknown subject": svc.keys.sign(good_claims("no-such-user")),
        "garbage": "a.b.c",
    }
    for name, forged in attacks.items():
        assert me_status(svc, forged) == 401, name
    # The genuine token still works, and nothing changed.
    me = svc.call("GET", "/v1/users/me", token)
    assert me.status_code == 200 and me.json["role"] == "user"


def test_key_file_is_private_and_kept_across_restarts(tmp_path):
    path = tmp_path / "keys" / "users-signing.json"
    ring = KeyRing(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = ring.access_token("u1", "user", datetime.now(UTC), 60)
    again = KeyRing(path)
    assert again.signing_kid == ring.signing_kid
    assert again.verify(token).sub == "u1"
    (private,) = read_key_file(path)
    assert "d" in private
    assert all("d" not in k for k in again.jwks()["keys"])
    assert not list(path.parent.glob("*.tmp"))


def _make_ring(path: str, barrier) -> None:  # runs in a child process
    barrier.wait()
    KeyRing(Path(path))


def test_processes_starting_at_once_share_one_key(tmp_path):
    path = tmp_path / "keys" / "users-signing.json"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_make_ring, args=(str(path), barrier)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    keys = read_key_file(path)
    assert len(keys) == 1
    assert KeyRing(path).signing_kid == keys[0]["kid"]
    assert not list(path.parent.glob("*.tmp"))


def test_rotation_new_key_signs_old_still_verifies_until_dropped(tmp_path):
    path = tmp_path / "keys" / "users-signing.json"
    ticks = [0.0]
    ring = KeyRing(path, monotonic=lambda: ticks[0])
    now = datetime.now(UTC)
    old_kid = ring.signing_kid
    old_token = ring.access_token("u1", "user", now, 300)

    new_public = rotate_key_file(path, keep=2)
    assert "d" not in new_public
    # Another process (same file) signs with the new key at once; this ring learns of it when
    # a token names the new kid, or within its check interval.
    other = KeyRing(path)
    assert other.signing_kid == new_public["kid"] != old_kid
    new_token = other.access_token("u2", "admin", now, 300)
    assert ring.verify(new_token).sub == "u2"
    assert ring.verify(old_token).sub == "u1"
    ticks[0] += 5  # past the check interval: the next use reloads the file
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new_public["kid"], old_kid]
    # The gateway's KeySet, built from the published JWKS, verifies both as well.
    edge = KeySet(ring.jwks())
    assert edge.verify(old_token).sub == "u1" and edge.verify(new_token).role == "admin"

    rotate_key_file(path, keep=2)  # the first key is dropped now
    ticks[0] += 5
    with pytest.raises(InvalidToken):
        ring.verify(old_token)
    assert ring.verify(new_token).sub == "u2"
    assert len(ring.jwks()["keys"]) == 2
    assert ring.signing_kid == read_key_file(path)[-1]["kid"]


def test_signing_keys_path_from_the_environment(tmp_path):
    configured = tmp_path / "secrets" / "signing.json"
    settings = Settings.from_env(
        "users", env={"DATA_DIR": str(tmp_path), "USERS_SIGNING_KEYS": str(configured)}
    )
    assert default_key_path(settings) == configured
    default = Settings.from_env("users", env={"DATA_DIR": str(tmp_path)})
    assert default_key_path(default) == tmp_path / "keys" / "users-signing.json"


def test_jwks_of_the_service_verifies_its_tokens(svc):
    user, token = svc.user_with_token("alice")
    edge = KeySet(svc.client.simulate_get("/v1/auth/jwks").json)
    claims = edge.verify(token)
    assert claims.sub == user["id"] and claims.role == "user" and claims.jti


def test_invoke_rotate_keys(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    path = tmp_path / "keys" / "users-signing.json"
    first = KeyRing(path).signing_kid
    invoke = Path(sys.executable).parent / "invoke"
    done = subprocess.run(
        [str(invoke), "rotate-keys"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    kids = [k["kid"] for k in read_key_file(path)]
    assert len(kids) == 2 and kids[0] == first
    assert KeyRing(path).signing_kid == kids[1]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
