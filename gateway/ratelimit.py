"""The gateway's edge policy: token buckets per route class and client.

Route classes (:class:`EdgePolicy`), each a :class:`RateLimiter` with its own rate and burst:

- ``auth``: ``POST /v1/auth/token`` (login) and ``POST /v1/users`` (sign-up), per client
  address, strict: what stops a password-guessing or sign-up flood;
- ``anonymous``: any other request without a token, per client address (the general
  ``GATEWAY_RATE_LIMIT`` / ``GATEWAY_RATE_BURST``);
- ``user``: requests with a valid token, per token subject (many users behind one address
  share nothing);
- ``admin``: the same for admins, roomier: one admin script (``invoke populate``) must not be
  throttled.

Unset class settings follow the general ones (see :func:`derived_limits`), so changing
``GATEWAY_RATE_LIMIT`` at run time (:meth:`EdgePolicy.set_general`, what a Consul KV watch
calls) moves every class that was not set on its own, and ``0`` turns them all off.

Where the buckets live (:class:`Buckets`): in this process (:class:`MemoryBuckets`; several
gateway instances then each enforce the limit on their own) or, with ``REDIS_URL``, in Redis
(:class:`RedisBuckets`: one Lua script takes tokens atomically, so every gateway instance
shares one bucket per client). Redis down: requests pass (fail open), said once per period
in the log and in ``/metrics``.
"""

from __future__ import annotations

import abc
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache

log = logging.getLogger("gateway.ratelimit")


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Decision:
    """The outcome of taking from a bucket: allowed, or wait ``retry_after`` seconds."""

    allowed: bool
    retry_after: int = 0


def _refused(missing: float, rate: float) -> Decision:
    return Decision(False, retry_after=max(1, math.ceil(missing / rate)))


class Buckets(abc.ABC):
    """Token buckets by key: where they are kept (this process, Redis)."""

    @abc.abstractmethod
    async def take(self, key: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket (``burst`` tokens, refilled at ``rate``
        a second) if it has them."""

    async def start(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Connect (ASGI lifespan startup)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Disconnect (ASGI lifespan shutdown)."""


class MemoryBuckets(Buckets):
    """Buckets in this process's memory: at most ``max_keys`` (least recently used go first;
    a forgotten bucket comes back full, which only ever errs on the lenient side)."""

    def __init__(self, clock: Callable[[], float], *, max_keys: int = 100_000) -> None:
        self.clock = clock
        self._buckets: LRUCache[str, _Bucket] = LRUCache(maxsize=max_keys)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def take_now(self, key: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        """:meth:`take`, without awaiting (nothing here waits)."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(tokens=float(burst), updated=now)
                self._buckets[key] = bucket
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(burst), bucket.tokens + elapsed * rate)
                bucket.updated = now
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return Decision(True)
            missing = cost - bucket.tokens
        return _refused(missing, rate)

    async def take(self, key: str, rate: float, burst: int, cost: float = 1.0) -> Decision:
        return self.take_now(key, rate, burst, cost)


class RateLimiter:
    """One class of limit: buckets of ``burst`` tokens refilled at ``rate`` tokens a second,
    one per key. ``rate <= 0`` turns it off. Its buckets are its own (in memory, unless
    ``buckets`` is given; keys are prefixed with ``name`` there). :meth:`set_limits` changes
    rate and burst at run time (filled buckets stay, trimmed to a smaller burst)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_keys: int = 100_000,
        buckets: Buckets | None = None,
        name: str = "",
    ) -> None:
        self.name = name
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.clock = clock
        self._memory = MemoryBuckets(clock, max_keys=max_keys)
        self.buckets = buckets or self._memory

    @property
    def _buckets(self) -> MemoryBuckets:
        return self._memory

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def set_limits(self, rate: float | None = None, burst: int | None = None) -> None:
        """Change the rate (tokens a second, ``0`` off) and/or the burst from now on."""
        if rate is not None:
            self.rate = float(rate)
        if burst is not None:
            self.burst = max(1, int(burst))

    def take(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket in this process's memory."""
        if not self.enabled:
            return Decision(True)
        return self._memory.take_now(key, self.rate, self.burst, cost)

    async def acquire(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket wherever the buckets are kept."""
        if not self.enabled:
            return Decision(True)
        if self.buckets is self._memory:
            return self._memory.take_now(key, self.rate, self.burst, cost)
        return await self.buckets.take(f"{self.name}:{key}", self.rate, self.burst, cost)


@dataclass(frozen=True)
class Limits:
    """Rate (tokens a second, ``0`` off) and burst of every route class."""

    auth: tuple[float, int]
    anonymous: tuple[float, int]
    user: tuple[float, int]
    admin: tuple[float, int]


# How the classes follow the general limit when their own settings are unset.
LOGIN_RATE_DIVISOR = 20
LOGIN_BURST_DIVISOR = 4
ADMIN_RATE_FACTOR = 10
ADMIN_BURST_FACTOR = 25


def derived_limits(
    rate: float,
    burst: int,
    *,
    login: tuple[float | None, int | None] = (None, None),
    user: tuple[float | None, int | None] = (None, None),
    admin: tuple[float | None, int | None] = (None, None),
) -> Limits:
    """Every class's limits from the general ``rate``/``burst`` and the classes' own settings
    (``None``: follow the general one). Defaults 20/s, 40: login 1/s, 10; user 20/s, 40;
    admin 200/s, 1000."""

    def pick(own: float | int | None, general: float) -> float:
        return general if own is None else own

    return Limits(
        auth=(
            pick(login[0], rate / LOGIN_RATE_DIVISOR),
            int(pick(login[1], max(1, burst // LOGIN_BURST_DIVISOR))),
        ),
        anonymous=(rate, burst),
        user=(pick(user[0], rate), int(pick(user[1], burst))),
        admin=(
            pick(admin[0], rate * ADMIN_RATE_FACTOR),
            int(pick(admin[1], burst * ADMIN_BURST_FACTOR)),
        ),
    )


class EdgePolicy:
    """The gateway's rate limits: one :class:`RateLimiter` per route class over shared
    :class:`Buckets`; :meth:`set_general` (or assigning :attr:`rate` / :attr:`burst`)
    changes the general limit at run time."""

    CLASSES = ("auth", "anonymous", "user", "admin")

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        *,
        buckets: Buckets | None = None,
        login: tuple[float | None, int | None] = (None, None),
        user: tuple[float | None, int | None] = (None, None),
        admin: tuple[float | None, int | None] = (None, None),
        anonymous: RateLimiter | None = None,
    ) -> None:
        self.buckets = buckets or MemoryBuckets(clock)
        self._own = {"login": login, "user": user, "admin": admin}
        self._rate, self._burst = float(rate), int(burst)
        self.limiters = {
            name: RateLimiter(0, 1, clock, buckets=self.buckets, name=name) for name in self.CLASSES
        }
        self._fixed_anonymous = anonymous is not None
        if anonymous is not None:  # a test's own per-address buckets
            self.limiters["anonymous"] = anonymous
        self._apply()

    @classmethod
    def from_settings(
        cls, settings: Any, clock: Callable[[], float], buckets: Buckets | None = None
    ) -> EdgePolicy:
        """The policy of the gateway's settings (``GATEWAY_*RATE*``)."""
        return cls(
            settings.gateway_rate_limit,
            settings.gateway_rate_burst,
            clock,
            buckets=buckets,
            login=(settings.gateway_login_rate_limit, settings.gateway_login_rate_burst),
            user=(settings.gateway_user_rate_limit, settings.gateway_user_rate_burst),
            admin=(settings.gateway_admin_rate_limit, settings.gateway_admin_rate_burst),
        )

    def _apply(self) -> None:
        limits = derived_limits(self._rate, self._burst, **self._own)
        for name in self.CLASSES:
            if name == "anonymous" and self._fixed_anonymous:
                continue
            self.limiters[name].set_limits(*getattr(limits, name))

    @property
    def rate(self) -> float:
        """The general rate (``GATEWAY_RATE_LIMIT``)."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self.set_general(rate=value)

    @property
    def burst(self) -> int:
        """The general burst (``GATEWAY_RATE_BURST``)."""
        return self._burst

    @burst.setter
    def burst(self, value: int) -> None:
        self.set_general(burst=value)

    def set_general(self, rate: float | None = None, burst: int | None = None) -> None:
        """Change the general rate and/or burst from now on; the classes without settings of
        their own follow."""
        if rate is not None:
            self._rate = float(rate)
        if burst is not None:
            self._burst = max(1, int(burst))
        self._apply()
        log.info(
            "rate limits changed",
            extra={
                name: {"rate": lim.rate, "burst": lim.burst} for name, lim in self.limiters.items()
            },
        )

    def limits(self) -> Limits:
        """The limits in force now."""
        return Limits(**{name: (lim.rate, lim.burst) for name, lim in self.limiters.items()})

    async def check(self, route_class: str, key: str) -> Decision:
        """Take one token of ``route_class`` for ``key`` (an address or a subject)."""
        return await self.limiters[route_class].acquire(key)

    async def start(self) -> None:
        """Connect the buckets' store (ASGI lifespan startup)."""
        await self.buckets.start()

    async def close(self) -> None:
        """Disconnect it (ASGI lifespan shutdown)."""
        await self.buckets.close()
