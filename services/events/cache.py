"""The read caches: rendered answers of ``GET /v1/events`` and ``GET /v1/events/{id}``.

Pages of ``GET /v1/events`` (:class:`StampedCache`) are valid for one *change stamp* (a
counter the store bumps in the same transaction as every write to events, see
:class:`services.events.store.EventsStore`): a reader reads the stamp first (one primary-key
lookup) and uses only pages made under that same stamp, so after any write, by any thread or
process on the same store, the next list recomputes. The TTL only bounds memory and guards
against writes that bypass the repository.

Rendered events (:class:`VersionedCache`) are valid for one version of their event: a reader
reads the event's current ``version`` (one primary-key lookup, no document decoded) and uses
the entry only when it was rendered from that version, so a write to one event does not make
every other event render again. Event ids are never reused (random 128-bit ids), so an id and
a version name one content. Either way a client never reads an event older than its own last
write.

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
from typing import Any, TypeVar

from cachetools import TTLCache

T = TypeVar("T")
_MISSING = object()


def approximate_size(value: object) -> int:
    """Roughly the bytes an entry holds: its rendered text (str entries, or the ``text``
    field of tuple entries), plus a fixed overhead."""
    text = value if isinstance(value, str) else getattr(value, "text", "")
    return 256 + 2 * len(text) if isinstance(text, str) else 256


class _BoundedCache:
    """A thread-safe TTL cache, bounded in (approximate) bytes, counting its hits and misses;
    a subclass's ``_entry_size`` gives the bytes of one entry."""

    _entry_size: Callable[[Any], int] = staticmethod(approximate_size)

    def __init__(
        self,
        max_bytes: int = 32 * 1024 * 1024,
        ttl: float = 60.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: TTLCache = TTLCache(
            maxsize=max_bytes, ttl=ttl, timer=timer, getsizeof=self._entry_size
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()


class StampedCache(_BoundedCache):
    """A thread-safe TTL cache, bounded in (approximate) bytes, whose entries belong to one
    change stamp.

    When a newer stamp is seen, every older entry is dropped at once. A reader holding an
    older stamp than the newest seen (it raced a write) computes without caching."""

    _stamp = -1  # the newest stamp seen (set on the instance from the first one on)

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


class VersionedCache(_BoundedCache):
    """A thread-safe TTL cache, bounded in (approximate) bytes, whose entries each hold the
    version of the document they were made from; one is used only for that same version."""

    @staticmethod
    def _entry_size(entry: tuple[int, object]) -> int:
        return approximate_size(entry[1])

    def get_or_compute(
        self, key: Hashable, version: int, compute: Callable[[], tuple[int, T] | None]
    ) -> T | None:
        """The entry for ``key`` made from ``version``; else ``compute()``, which reads the
        document afresh and gives ``(its version, the value)`` (None: it is gone). What it
        gives is kept under the version it was made from, which may be newer than
        ``version`` (a write came between), never older than what the store held."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None and found[0] == version:
                self.hits += 1
                return found[1]
            self.misses += 1
        made = compute()
        if made is None:
            return None
        with self._lock:
            self._entries[key] = made
        return made[1]
