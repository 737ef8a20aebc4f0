"""The events service's collections over the storage port, and the change stamp that keeps
the read cache honest across threads and processes.

Every write to events also bumps the ``version`` of one stamp document (in the same
transaction where the store has transactions); readers key their cache on it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from eventpost.storage import (
    AnyOf,
    Collection,
    CollectionSpec,
    DuplicateKey,
    LazyCollection,
    Near,
    OutboxEvent,
    Page,
    Query,
    Range,
    Store,
)
from eventpost.timeutil import Clock, format_time, utcnow
from services.events.domain import Search

EVENTS = CollectionSpec(
    "events",
    indexes=(("starts_at",),),
    array_fields=("topics",),
    text_fields=("title", "description"),
    geo_field="place",
    geo_time_field="starts_at",
)
#: One document (id ``events``) whose ``version`` the store bumps on every write to events:
#: readers compare it to know whether what they cached is still current.
CHANGES = CollectionSpec("events_changes")
_STAMP_ID = "events"


def store_query(search: Search, store_cursor: str | None) -> Query:
    """The storage query of a validated search."""
    where: dict[str, Any] = {}
    if search.topics:
        where["topics"] = AnyOf(search.topics)
    if search.starts_from or search.starts_to:
        where["starts_at"] = Range(gte=search.starts_from, lte=search.starts_to)
    near = None
    if search.near is not None:
        near = Near(lat=search.near[0], lng=search.near[1], radius_km=search.radius_km)
    sort = (("distance", 1), ("starts_at", 1)) if search.sort == "distance" else (("starts_at", 1),)
    return Query(
        where=where,
        text=search.text,
        near=near,
        sort=sort,
        limit=search.limit,
        cursor=store_cursor,
    )


class EventsStore:
    """The events collection over a store, with every write bumping the change stamp (in
    the same transaction where the store has transactions). Collections are opened on first
    use, so building the app connects to nothing."""

    def __init__(self, store: Store, clock: Clock = utcnow) -> None:
        self.store = store
        self._clock = clock
        self.events: Collection = LazyCollection(store, EVENTS)
        self.changes: Collection = LazyCollection(store, CHANGES)
        self._stamp_ready = False
        self._stamp_lock = threading.Lock()

    def ping(self) -> None:
        """Raise when the store does not answer (``/ready``)."""
        self.store.ping()

    # -- reads ---------------------------------------------------------------------------

    def stamp(self) -> int:
        """The change stamp: it grows on every write to events (0 before the first)."""
        doc = self.changes.get(_STAMP_ID)
        return int(doc["version"]) if doc else 0

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The stored event, or None."""
        return self.events.get(event_id)

    def version_of(self, event_id: str) -> int | None:
        """The stored event's version (None: there is none), without reading the event."""
        return self.events.version_of(event_id)

    def search(self, search: Search, store_cursor: str | None) -> Page:
        """One page of the events a search finds."""
        return self.events.find(store_query(search, store_cursor))

    # -- writes --------------------------------------------------------------------------

    def insert(self, doc: Mapping[str, Any], *, events: Sequence[OutboxEvent] = ()) -> dict:
        """Store a new event with its outbox events."""
        with self._atomic():
            saved = self.events.insert(dict(doc), events=events)
            self._bump()
        return saved

    def insert_many(
        self,
        docs: Sequence[Mapping[str, Any]],
        events_of: Callable[[Mapping[str, Any]], Sequence[OutboxEvent]] | None = None,
    ) -> int:
        """Bulk load (``invoke populate --direct``): one transaction, with the outbox events
        ``events_of(doc)`` gives for each document (none by default)."""
        with self._atomic():
            for doc in docs:
                self.events.insert(dict(doc), events=events_of(doc) if events_of else ())
            self._bump()
        return len(docs)

    def update(
        self,
        event_id: str,
        changes: Mapping[str, Any],
        *,
        expected_version: int,
        events: Sequence[OutboxEvent] = (),
    ) -> dict:
        """Change an event; raises NotFound / VersionConflict."""
        with self._atomic():
            saved = self.events.update(
                event_id, changes, expected_version=expected_version, events=events
            )
            self._bump()
        return saved

    def delete(
        self, event_id: str, *, expected_version: int, events: Sequence[OutboxEvent] = ()
    ) -> bool:
        """Remove an event; False when there was none. Raises VersionConflict."""
        with self._atomic():
            gone = self.events.delete(event_id, expected_version=expected_version, events=events)
            if gone:
                self._bump()
        return gone

    def _atomic(self) -> AbstractContextManager[None]:
        """One transaction for a write and its stamp bump where the store has transactions.

        Where it has none (a standalone MongoDB, mongomock) the write (with its outbox
        events, atomic on its own) comes first and the bump right after, before the client is
        answered; a reader that sees the new stamp therefore sees the write. Only a crash
        between the two leaves other processes' caches stale, for at most their TTL."""
        self._ensure_stamp()
        if not self.store.supports_transactions():
            return contextlib.nullcontext()
        return self.store.transaction()

    def _ensure_stamp(self) -> None:
        """Create the stamp document before the first write (outside any transaction: a
        duplicate key inside one would abort it on MongoDB)."""
        if self._stamp_ready:
            return
        with self._stamp_lock:
            if not self._stamp_ready:
                if self.changes.get(_STAMP_ID) is None:
                    # Another process may create it first.
                    with contextlib.suppress(DuplicateKey):
                        self.changes.insert({"id": _STAMP_ID, "changed_at": None})
                self._stamp_ready = True

    def _bump(self) -> None:
        self.changes.update(_STAMP_ID, {"changed_at": format_time(self._clock())})
