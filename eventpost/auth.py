"""Access-token checks shared by the gateway and every service.

The users service signs short-lived access tokens (JWT, EdDSA over Ed25519, a ``kid`` in the
header, ``iss``/``aud``/``sub``/``role``/``exp``/``iat``/``jti`` claims) and publishes its
public keys as a JWKS at ``GET /v1/auth/jwks``. Everyone else verifies with :class:`KeySet`:
the algorithm list is explicit (``alg: none`` or HS256 signed with a public key never pass),
``exp`` is required, ``iss`` and ``aud`` must match. An unknown ``kid`` raises
:class:`UnknownKey` so the caller can refetch the JWKS once (sync or async as it lives).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import falcon
import jwt
from cachetools import LRUCache

log = logging.getLogger(__name__)

ISSUER = "eventpost-users"
AUDIENCE = "eventpost"
ALGORITHMS = ["EdDSA"]
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


class InvalidToken(Exception):
    """The token cannot be trusted (bad signature, expired, wrong issuer, ...)."""


class UnknownKey(InvalidToken):
    """The token names a key (``kid``) that is not in the key set."""


class KeysUnavailable(Exception):
    """No signing key is known (the JWKS could not be fetched): tokens cannot be checked, so
    the answer is 503, not 401."""


@dataclass(frozen=True)
class Claims:
    """Who a verified access token speaks for."""

    sub: str
    role: str
    exp: int
    jti: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class KeySet:
    """The public keys that may sign access tokens, by ``kid``; thread-safe to replace.

    A signature check costs a few hundred microseconds and a client sends the same token for
    minutes, so verified tokens are remembered (bounded LRU keyed by the exact token string,
    ``memo_size``; 0 turns it off) until their ``exp``, and forgotten whenever the keys are
    replaced, so a withdrawn key stops working at the next :meth:`update`."""

    def __init__(
        self,
        jwks: Mapping[str, Any] | None = None,
        *,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        leeway: float = 0.0,
        memo_size: int = 10_000,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._keys: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._memo: LRUCache[str, Claims] | None = LRUCache(memo_size) if memo_size else None
        self._wall_clock = wall_clock
        self._generation = 0  # bumped with every update: a check begun before is not kept
        if jwks is not None:
            self.update(jwks)

    def update(self, jwks: Mapping[str, Any]) -> None:
        """Replace the keys with those of a JWKS document (keys of other types are ignored)."""
        keys = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or "kid" not in jwk:
                continue
            keys[jwk["kid"]] = jwt.PyJWK.from_dict(dict(jwk), algorithm="EdDSA").key
        with self._lock:
            self._keys = keys
            self._generation += 1
            if self._memo is not None:
                self._memo.clear()

    def verify(self, token: str) -> Claims:
        """The claims of a valid token; raises :class:`InvalidToken` / :class:`UnknownKey`."""
        if self._memo is None:
            return self._verify(token)
        with self._lock:
            known = self._memo.get(token)
            generation = self._generation
        if known is not None and known.exp > self._wall_clock():
            return known
        claims = self._verify(token)
        with self._lock:
            if generation == self._generation:
                self._memo[token] = claims
        return claims

    def _verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        if header.get("alg") not in ALGORITHMS:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise UnknownKey(f"unknown key id {kid!r}")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        role = claims.get("role", "user")
        if not isinstance(claims["sub"], str) or role not in ("user", "admin"):
            raise InvalidToken("bad subject or role")
        return Claims(sub=claims["sub"], role=role, exp=int(claims["exp"]), jti=claims.get("jti"))


def fetch_jwks(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """GET a JWKS document (blocking; for the WSGI services)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - internal URL
        return json.loads(resp.read())


class RemoteKeySet:
    """A :class:`KeySet` kept from a JWKS URL: fetched on first use, again when it is older
    than ``max_age_seconds`` (so a key dropped by rotation stops verifying) and once when a
    token names an unknown ``kid`` (at most every ``min_refetch_seconds``)."""

    def __init__(
        self,
        jwks_url: Callable[[], str],
        *,
        min_refetch_seconds: float = 5.0,
        max_age_seconds: float = 300.0,
        fetch: Callable[[str], Mapping[str, Any]] = fetch_jwks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = KeySet()
        self._url = jwks_url
        self._fetch = fetch
        self._clock = clock
        self._min_refetch = min_refetch_seconds
        self._max_age = max_age_seconds
        self._tried_at: float | None = None
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        with self._lock:
            now = self._clock()
            if self._tried_at is not None and now - self._tried_at < self._min_refetch:
                return
            self._tried_at = now
            try:
                self.keys.update(self._fetch(self._url()))
            except Exception:
                log.warning("could not fetch the JWKS", exc_info=True)
            else:
                self._loaded_at = now

    def verify(self, token: str) -> Claims:
        """Verify, refetching the key set when it is stale or the token's key is unknown;
        raises :class:`KeysUnavailable` while no key set was ever fetched."""
        if self._loaded_at is None or self._clock() - self._loaded_at > self._max_age:
            self._refresh()
        if self._loaded_at is None:
            raise KeysUnavailable("the users service's JWKS could not be fetched")
        try:
            return self.keys.verify(token)
        except UnknownKey:
            self._refresh()
            return self.keys.verify(token)


class Verifier(Protocol):
    """Anything with ``verify(token) -> Claims`` (:class:`KeySet`, :class:`RemoteKeySet`,
    the users service's key ring, a test's own)."""

    def verify(self, token: str) -> Claims:
        """The claims of a valid access token; raises :class:`InvalidToken`."""
        ...


def unauthorized(
    description: str = "The access token is invalid or expired.",
    error: str | None = "invalid_token",
) -> falcon.HTTPUnauthorized:
    """The 401 every part answers for a missing (``error=None``) or unusable token, with its
    RFC 6750 ``WWW-Authenticate`` challenge."""
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return falcon.HTTPUnauthorized(
        title="Unauthorized", description=description, challenges=[challenge]
    )


def keys_unavailable() -> falcon.HTTPServiceUnavailable:
    """The 503 for a token that cannot be checked because no signing key is known yet."""
    return falcon.HTTPServiceUnavailable(
        title="Service Unavailable",
        description="Access tokens cannot be checked right now.",
        retry_after=5,
    )


def bearer_token(req: falcon.Request) -> str:
    """The token of an ``Authorization: Bearer`` header, or 401."""
    header = req.get_header("Authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("A bearer access token is required.", error=None)
    return token.strip()


def authenticate(req: falcon.Request, verifier: KeySet | RemoteKeySet | Verifier) -> Claims:
    """The verified claims of the request's bearer token, or 401 (never trusts headers
    other than the token itself)."""
    token = bearer_token(req)
    try:
        return verifier.verify(token)
    except InvalidToken:
        raise unauthorized() from None
    except KeysUnavailable:
        raise keys_unavailable() from None
