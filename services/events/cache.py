"""The read cache: rendered answers of ``GET /v1/events`` and ``GET /v1/events/{id}``.

Entries are valid for one *change stamp* (a counter the store bumps in the same transaction
as every write to events, see :class:`services.events.store.EventsStore`). A reader
reads the stamp first (one primary-key lookup) and uses only entries made under that same
stamp, so after any write, by any thread or process on the same store, the next read
recomputes. A client therefore never reads an event older than its own last write. The TTL
only bounds memory and guards against writes that bypass the repository.

falcon-caching was the seed's choice; 1.1.0 (its last release) does not work with Falcon 4:
it caches ``resp.text``, which is None when a responder sets ``resp.media`` (the second GET
answers 200 with an empty body), drops headers such as ``ETag``, keys entries on path and
method only (``?topic=jazz`` and ``?topic=rock`` share one entry) and invalidates only the
written path (a PATCH of one event leaves cached lists stale).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

from cachetools import TTLCache

T = TypeVar("T")
_MISSING = object()


def approximate_size(value: object) -> int:
    """Roughly the bytes an entry holds: its rendered text (str entries, or the ``text``
    field of tuple entries), plus a fixed overhead."""
    text = value if isinstance(value, str) else getattr(value, "text", "")
    return 256 + 2 * len(text) if isinstance(text, str) else 256


class StampedCache:
    """A thread-safe TTL cache, bounded in (approximate) bytes, whose entries belong to one
    change stamp.

    When a newer stamp is seen, every older entry is dropped at once. A reader holding an
    older stamp than the newest seen (it raced a write) computes without caching."""

    def __init__(
        self,
        max_bytes: int = 32 * 1024 * 1024,
        ttl: float = 60.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: TTLCache = TTLCache(
            maxsize=max_bytes, ttl=ttl, timer=timer, getsizeof=approximate_size
        )
        self._stamp = -1
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, stamp: int, key: Hashable, compute: Callable[[], T]) -> T:
        """The entry for ``key`` made under ``stamp``, computing (and keeping) it if needed."""
        with self._lock:
            if stamp > self._stamp:
                self._entries.clear()
                self._stamp = stamp
            elif stamp == self._stamp:
                found = self._entries.get(key, _MISSING)
                if found is not _MISSING:
                    self.hits += 1
                    return found
            self.misses += 1
        value = compute()
        with self._lock:
            if stamp == self._stamp:
                self._entries[key] = value
        return value

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
