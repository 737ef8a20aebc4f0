"""Per-client rate limits: a token bucket per key (client address, authenticated subject).

The buckets live in this process's memory. One gateway instance enforces the limit exactly;
with several instances behind a load balancer each keeps its own buckets, so a client gets up
to N times the limit. A shared limiter (Redis, or the load balancer's own) would be needed then.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Decision:
    """The outcome of one :meth:`RateLimiter.take`: allowed, or wait ``retry_after`` seconds."""

    allowed: bool
    retry_after: int = 0


class RateLimiter:
    """Token buckets of ``burst`` tokens refilled at ``rate`` tokens per second, one per key.

    ``rate <= 0`` turns the limiter off. At most ``max_keys`` buckets are kept (least recently
    used go first; a forgotten bucket comes back full, which only ever errs on the lenient side).
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        *,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self._buckets: LRUCache[str, _Bucket] = LRUCache(maxsize=max_keys)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket if it has them."""
        if not self.enabled:
            return Decision(True)
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(tokens=float(self.burst), updated=now)
                self._buckets[key] = bucket
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
                bucket.updated = now
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return Decision(True)
            wait = (cost - bucket.tokens) / self.rate
        return Decision(False, retry_after=max(1, math.ceil(wait)))
