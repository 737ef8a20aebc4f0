"""Token checks at the edge: bearer tokens verified against the users service's JWKS.

The key set is fetched through the gateway's own upstream client, kept, refetched when it is
older than ``max_age`` and once when a token names an unknown ``kid``. Refetches are at most one
per ``min_refetch_seconds`` and coalesced (concurrent requests wait for the same fetch), so a
flood of tokens with random ``kid`` values costs the users service one request per interval.

A signature check costs a few hundred microseconds, and a client sends the same token for
minutes, so verified tokens are remembered (bounded LRU, keyed by the exact token string) until
their ``exp``; the memory is dropped whenever the key set changes, so a withdrawn key stops
working at the next JWKS fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cachetools import LRUCache

from eventpost.auth import Claims, InvalidToken, KeySet, KeysUnavailable, UnknownKey

log = logging.getLogger("gateway.auth")


class EdgeVerifier:
    """Verifies access tokens with a :class:`KeySet` kept from an async JWKS fetcher."""

    def __init__(
        self,
        fetch_jwks: Callable[[], Awaitable[Mapping[str, Any]]],
        *,
        clock: Callable[[], float] = time.monotonic,
        min_refetch_seconds: float = 5.0,
        max_age: float = 300.0,
        wall_clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        self.keys = KeySet()
        self._wall_clock = wall_clock
        self._verified: LRUCache[str, Claims] = LRUCache(maxsize=cache_size)
        self._jwks: Mapping[str, Any] | None = None
        self._fetch = fetch_jwks
        self._clock = clock
        self._min_refetch = min_refetch_seconds
        self._max_age = max_age
        self._fetched_at: float | None = None  # time of the last attempt
        self._loaded_at: float | None = None  # time of the last successful fetch
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def _refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < self._min_refetch:
                return
            self._fetched_at = now
            self.fetches += 1
            try:
                jwks = await self._fetch()
                self.keys.update(jwks)
                if jwks != self._jwks:
                    self._verified.clear()
                    self._jwks = jwks
                self._loaded_at = now
            except Exception:
                log.warning("could not fetch the JWKS of the users service", exc_info=True)

    def _stale(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at > self._max_age

    async def verify(self, token: str) -> Claims:
        """The claims of a valid token; raises :class:`InvalidToken` (401) or
        :class:`KeysUnavailable` (503: no key is known to check it with)."""
        if self._stale():
            await self._refresh()
        known = self._verified.get(token)
        if known is not None and known.exp > self._wall_clock():
            return known
        try:
            claims = self.keys.verify(token)
        except UnknownKey:
            await self._refresh()
            if self._loaded_at is None:
                raise KeysUnavailable("the users service's JWKS could not be fetched") from None
            claims = self.keys.verify(token)
        self._verified[token] = claims
        return claims


__all__ = ["Claims", "EdgeVerifier", "InvalidToken", "KeysUnavailable", "UnknownKey"]
