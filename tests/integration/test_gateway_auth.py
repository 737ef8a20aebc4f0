"""Token checks at the gateway over real HTTP: a fake users service serves the JWKS of a fresh
Ed25519 key; forged, expired and unknown tokens never reach a service."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from devtools.http_doubles import (
    FakeServices,
    ManualClock,
    TokenMint,
    call,
    closed_port,
    running_gateway,
)


@pytest.fixture
def gateway(fakes: FakeServices) -> Iterator[str]:
    with running_gateway(fakes) as (url, _):
        yield url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def forwarded(fakes: FakeServices) -> int:
    return sum(len(f.seen) for f in fakes.fakes.values())


def assert_401(answer) -> None:
    assert answer.status == 401, answer.body
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json["status"] == 401


def test_valid_token_passes_and_is_forwarded(gateway, fakes):
    token = fakes.mint.token("ann")
    answer = call(gateway, "GET", "/v1/users/me", headers=bearer(token))
    assert answer.status == 200
    assert fakes.users.seen[-1].headers["Authorization"] == f"Bearer {token}"
    admin = fakes.mint.token("root", role="admin")
    created = call(gateway, "POST", "/v1/events", headers=bearer(admin), body=b"{}")
    assert created.status == 200
    assert fakes.events.seen[-1].method == "POST"
    assert fakes.users.jwks_fetches == 1  # fetched once, then cached


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/users/me"),
        ("PATCH", "/v1/users/me"),
        ("POST", "/v1/users/me/emails"),
        ("GET", "/v1/notifications"),
        ("POST", "/v1/notifications"),
        ("DELETE", "/v1/notifications/n1"),
        ("POST", "/v1/events"),
        ("PATCH", "/v1/events/e1"),
        ("DELETE", "/v1/events/e1"),
    ],
)
def test_protected_routes_need_a_token(gateway, fakes, method, path):
    assert_401(call(gateway, method, path, body=b"{}" if method != "GET" else None))
    assert forwarded(fakes) == 0


def test_public_routes_pass_without_a_token(gateway, fakes):
    for method, path in [
        ("GET", "/v1/events"),
        ("GET", "/v1/events/e1"),
        ("POST", "/v1/users"),
        ("POST", "/v1/auth/token"),
    ]:
        assert call(gateway, method, path).status == 200
    assert forwarded(fakes) == 4
    assert "Authorization" not in fakes.events.seen[0].headers


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _hs256_signed_with(secret: bytes, claims: dict, kid: str) -> str:
    """The classic key-confusion forgery: HMAC over the token with the public key as secret."""
    signing_input = _b64({"alg": "HS256", "typ": "JWT", "kid": kid}) + "." + _b64(claims)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def bad_tokens(mint: TokenMint) -> dict[str, str]:
    now = int(time.time())
    claims = {
        "iss": "eventpost-users",
        "aud": "eventpost",
        "sub": "ann",
        "role": "admin",
        "iat": now,
        "exp": now + 300,
    }
    public_pem = mint.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    good = mint.token("ann")
    header, _, signature = good.split(".")
    tampered_payload = _b64({**jwt.decode(good, options={"verify_signature": False}), "sub": "x"})
    return {
        "garbage": "not-a-jwt",
        "expired": mint.token("ann", ttl=-60),
        "alg-none": jwt.encode(claims, None, algorithm="none", headers={"kid": mint.kid}),
        "hs256-with-public-key": _hs256_signed_with(public_pem, claims, mint.kid),
        "no-exp": jwt.encode(
            {k: v for k, v in claims.items() if k != "exp"},
            mint.key,
            algorithm="EdDSA",
            headers={"kid": mint.kid},
        ),
        "wrong-iss": mint.token("ann", iss="someone-else"),
        "wrong-aud": mint.token("ann", aud="another-api"),
        "unknown-kid": TokenMint().token("ann"),
        "tampered": f"{header}.{tampered_payload}.{signature}",
        "bad-role": mint.token("ann", role="superuser"),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "expired",
        "alg-none",
        "hs256-with-public-key",
        "no-exp",
        "wrong-iss",
        "wrong-aud",
        "unknown-kid",
        "tampered",
        "bad-role",
    ],
)
def test_bad_tokens_are_401_at_the_edge(gateway, fakes, kind):
    token = bad_tokens(fakes.mint)[kind]
    # even on a public route: a token that is there must be good
    assert_401(call(gateway, "GET", "/v1/events", headers=bearer(token)))
    assert_401(call(gateway, "GET", "/v1/users/me", headers=bearer(token)))
    assert forwarded(fakes) == 0


def test_non_bearer_scheme_is_401(gateway, fakes):
    assert_401(call(gateway, "GET", "/v1/users/me", headers={"Authorization": "Basic YTpi"}))
    assert forwarded(fakes) == 0


def test_unknown_kid_refetches_the_jwks_once_then_not_again_until_the_interval(fakes):
    clock = ManualClock()
    with running_gateway(fakes, clock=clock, jwks_min_refetch=5) as (url, _):
        assert call(url, "GET", "/v1/users/me", headers=bearer(fakes.mint.token())).status == 200
        assert fakes.users.jwks_fetches == 1
        clock.advance(5)
        stranger = TokenMint()
        assert_401(call(url, "GET", "/v1/users/me", headers=bearer(stranger.token())))
        assert fakes.users.jwks_fetches == 2

        # A flood of random kids within the interval costs the users service nothing more.
        tokens = [fakes.mint.token(kid=f"random-{i}") for i in range(30)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda t: call(url, "GET", "/v1/users/me", headers=bearer(t)), tokens)
            )
        assert {a.status for a in answers} == {401}
        assert fakes.users.jwks_fetches == 2

        # Key rotation: the new key is published; after the interval its tokens pass.
        rotated = TokenMint()
        fakes.users.jwks = {"keys": [fakes.mint.jwk(), rotated.jwk()]}
        clock.advance(5)
        assert call(url, "GET", "/v1/users/me", headers=bearer(rotated.token())).status == 200
        assert fakes.users.jwks_fetches == 3
        assert call(url, "GET", "/v1/users/me", headers=bearer(rotated.token())).status == 200
        assert fakes.users.jwks_fetches == 3


def test_users_service_down_means_tokens_cannot_be_checked(fakes):
    with running_gateway(fakes, ports={"users": closed_port()}) as (url, _):
        answer = call(url, "GET", "/v1/events", headers=bearer(fakes.mint.token()))
        assert answer.status == 503
        assert answer.json["status"] == 503
        assert answer.headers["Retry-After"]
        assert not fakes.events.seen
        # without a token, public routes still work
        assert call(url, "GET", "/v1/events").status == 200
