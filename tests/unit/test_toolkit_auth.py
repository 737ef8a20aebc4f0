"""Token checks shared by the services: RemoteKeySet keeps the users JWKS fresh."""

from __future__ import annotations

import time

import falcon
import falcon.testing
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devtools.http_doubles import TokenMint
from eventpost.auth import (
    AUDIENCE,
    ISSUER,
    InvalidToken,
    KeySet,
    KeysUnavailable,
    RemoteKeySet,
    UnknownKey,
    authenticate,
)


class Signer:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = Ed25519PrivateKey.generate()

    def jwk(self) -> dict:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return jwk | {"kid": self.kid, "use": "sig", "alg": "EdDSA"}

    def token(self, sub: str = "u1") -> str:
        now = int(time.time())
        claims = {
            "sub": sub,
            "role": "user",
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
        }
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": self.kid})


class Users:
    """The users service's JWKS as RemoteKeySet fetches it: counts fetches, can be down."""

    def __init__(self, *signers: Signer) -> None:
        self.signers = list(signers)
        self.fetches = 0
        self.down = False

    def fetch(self, url: str) -> dict:
        self.fetches += 1
        if self.down:
            raise ConnectionError("users is down")
        return {"keys": [s.jwk() for s in self.signers]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def remote(users: Users, clock: Clock) -> RemoteKeySet:
    return RemoteKeySet(
        lambda: "http://users/v1/auth/jwks",
        fetch=users.fetch,
        clock=clock,
        min_refetch_seconds=5,
        max_age_seconds=300,
    )


def test_a_new_key_is_fetched_once_for_an_unknown_kid():
    old, new = Signer("k1"), Signer("k2")
    users, clock = Users(old), Clock()
    keys = remote(users, clock)
    assert keys.verify(old.token()).sub == "u1"
    users.signers.append(new)
    clock.now += 10
    assert keys.verify(new.token()).sub == "u1"
    assert users.fetches == 2
    # A flood of unknown kids refetches at most every min_refetch_seconds.
    stranger = Signer("k-unknown")
    for _ in range(5):
        with pytest.raises(InvalidToken):
            keys.verify(stranger.token())
    assert users.fetches == 2


def test_a_key_dropped_by_rotation_stops_verifying_after_max_age():
    old, new = Signer("k1"), Signer("k2")
    users, clock = Users(old, new), Clock()
    keys = remote(users, clock)
    token = old.token()
    assert keys.verify(token).sub == "u1"
    users.signers.remove(old)
    clock.now += 299
    assert keys.verify(token).sub == "u1"  # still within max age
    clock.now += 2
    with pytest.raises(InvalidToken):
        keys.verify(token)


def test_no_key_set_ever_fetched_is_unavailable_not_invalid():
    signer = Signer("k1")
    users, clock = Users(signer), Clock()
    users.down = True
    keys = remote(users, clock)
    with pytest.raises(KeysUnavailable):
        keys.verify(signer.token())
    users.down = False
    clock.now += 6
    assert keys.verify(signer.token()).sub == "u1"


def test_authenticate_answers_401_for_bad_tokens_and_503_without_keys():
    signer = Signer("k1")
    users, clock = Users(signer), Clock()
    keys = remote(users, clock)

    class Me:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {"sub": authenticate(req, keys).sub}

    app = falcon.App()
    app.add_route("/me", Me())
    client = falcon.testing.TestClient(app)
    ok = client.simulate_get("/me", headers={"Authorization": f"Bearer {signer.token()}"})
    assert ok.json == {"sub": "u1"}
    missing = client.simulate_get("/me")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    forged = client.simulate_get("/me", headers={"Authorization": f"Bearer {Signer('k1').token()}"})
    assert forged.status_code == 401
    assert 'error="invalid_token"' in forged.headers["www-authenticate"]
    users.down = True
    cold = remote(users, clock)
    keys.__dict__.update(cold.__dict__)  # a service that never reached users
    unavailable = client.simulate_get("/me", headers={"Authorization": f"Bearer {signer.token()}"})
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "5"


def test_key_set_remembers_verified_tokens_until_exp_or_new_keys() -> None:
    mint = TokenMint()
    now = [time.time()]
    keys = KeySet(mint.jwks(), wall_clock=lambda: now[0])
    token = mint.token("ann", ttl=60)
    checked: list[str] = []
    original = keys._verify

    def counting(tok: str):
        checked.append(tok)
        return original(tok)

    keys._verify = counting  # type: ignore[method-assign]
    assert keys.verify(token).sub == "ann"
    assert keys.verify(token).sub == "ann"
    assert len(checked) == 1  # the second time from memory
    # Past its exp (by the wall clock) a remembered token is checked again.
    now[0] += 120
    keys.verify(token)
    assert len(checked) == 2
    # New keys: the memory is dropped, a token of a withdrawn key no longer passes.
    keys.update(TokenMint().jwks())
    with pytest.raises(UnknownKey):
        keys.verify(token)
