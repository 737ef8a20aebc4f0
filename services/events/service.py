"""The events service's use cases: search and read (through the read cache), create, patch
and delete (admins; each write queues its message in the same transaction).

Rules come from :mod:`services.events.domain`, storage from :class:`EventsStore`; every
refusal is an :mod:`eventpost.errors` error, which the web edge renders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from eventpost.contracts import EventCreated, EventDeleted, EventUpdated, Payload
from eventpost.errors import Missing
from eventpost.ids import new_id
from eventpost.storage import InvalidCursor, NotFound, OutboxEvent, VersionConflict
from eventpost.storage.optimistic import retry_on_conflict
from eventpost.timeutil import Clock, utcnow
from eventpost.web import dumps
from services.events.cache import StampedCache, VersionedCache
from services.events.domain import (
    EventIn,
    EventPatch,
    Search,
    apply_patch,
    decode_cursor,
    encode_cursor,
    etag_of,
    event_changed,
    malformed_cursor,
    new_event,
    next_updated_at,
    require_if_match,
    to_public,
)
from services.events.store import EventsStore

log = logging.getLogger("services.events")

T = TypeVar("T")

#: ``If-Match`` as the use cases take it: the strong tags it lists (``*`` included), or
#: None when it was not sent (see :func:`services.events.domain.require_if_match`).
IfMatch = frozenset[str] | None


class CachedEvent(NamedTuple):
    """What the read cache keeps of one event."""

    public: dict[str, Any]
    text: str
    etag: str
    version: int


def no_such_event() -> Missing:
    """The 404 of an event id nobody knows."""
    return Missing("No event with that id.")


class EventsService:
    """The use cases of events. ``request_id`` travels into the messages a write queues;
    ``by`` (the admin's user id) into the logs."""

    def __init__(
        self,
        store: EventsStore,
        cache: StampedCache,
        *,
        documents: VersionedCache | None = None,
        clock: Clock = utcnow,
        id_factory: Callable[[], str] = new_id,
    ) -> None:
        self.store = store
        self.cache = cache
        self.documents = documents or VersionedCache()
        self.clock = clock
        self.id_factory = id_factory

    # -- reads ---------------------------------------------------------------------------

    def search(self, search: Search) -> str:
        """One page of a search as the JSON text of ``{"items", "next_cursor"}``."""
        return self.cache.get_or_compute(
            self.store.stamp(), ("search", search), lambda: self._search_page(search)
        )

    def _search_page(self, search: Search) -> str:
        inner = decode_cursor(search.cursor, search) if search.cursor else None
        try:
            page = self.store.search(search, inner)
        except InvalidCursor:
            raise malformed_cursor() from None
        items = [to_public(doc) for doc in page.items]
        next_cursor = encode_cursor(search, page.next_cursor) if page.next_cursor else None
        return dumps({"items": items, "next_cursor": next_cursor})

    def get(self, event_id: str) -> CachedEvent:
        """An event, rendered; :class:`Missing` (404) when there is none."""

        def load() -> tuple[int, CachedEvent] | None:
            doc = self.store.get(event_id)
            if doc is None:
                return None
            public = to_public(doc)
            version = int(doc["version"])
            return version, CachedEvent(public, dumps(public), etag_of(doc), version)

        version = self.store.version_of(event_id)
        found = None if version is None else self.documents.get_or_compute(event_id, version, load)
        if found is None:
            raise no_such_event()
        return found

    # -- writes --------------------------------------------------------------------------

    def create(self, body: EventIn, *, by: str, request_id: str | None) -> dict[str, Any]:
        """Store a new event and queue ``event.created``; the stored document."""
        doc = new_event(body, self.id_factory(), self.clock())
        created = EventCreated(event=to_public(doc))
        saved = self.store.insert(doc, events=[self._message(created, request_id)])
        log.info("event created", extra={"event_id": doc["id"], "by": by})
        return saved

    def patch(
        self,
        event_id: str,
        patch: EventPatch,
        *,
        if_match: IfMatch,
        by: str,
        request_id: str | None,
    ) -> dict[str, Any]:
        """Merge ``patch`` into the event and queue ``event.updated`` (nothing is written
        when nothing changes); the stored document."""

        def attempt() -> dict[str, Any]:
            current = self._current(event_id, if_match)
            changes = apply_patch(current, patch)
            if not changes:
                return current  # nothing to change: no write, no event.updated
            changes["updated_at"] = next_updated_at(current, self.clock())
            updated = EventUpdated(
                event=to_public({**current, **changes}), old_starts_at=current["starts_at"]
            )
            try:
                saved = self.store.update(
                    event_id,
                    changes,
                    expected_version=int(current["version"]),
                    events=[self._message(updated, request_id)],
                )
            except NotFound:
                raise no_such_event() from None
            log.info(
                "event updated",
                extra={"event_id": event_id, "by": by, "fields": sorted(changes)},
            )
            return saved

        return self._optimistic(attempt, if_match)

    def delete(self, event_id: str, *, if_match: IfMatch, by: str, request_id: str | None) -> None:
        """Remove the event and queue ``event.deleted`` (with the event as it was)."""

        def attempt() -> None:
            current = self._current(event_id, if_match)
            deleted = EventDeleted(event_id=event_id, event=to_public(current))
            gone = self.store.delete(
                event_id,
                expected_version=int(current["version"]),
                events=[self._message(deleted, request_id)],
            )
            if not gone:
                raise no_such_event()

        self._optimistic(attempt, if_match)
        log.info("event deleted", extra={"event_id": event_id, "by": by})

    # -- helpers -------------------------------------------------------------------------

    def _current(self, event_id: str, if_match: IfMatch) -> dict[str, Any]:
        """The stored event a change starts from: 404 when none, 412 when ``If-Match``
        does not hold."""
        current = self.store.get(event_id)
        if current is None:
            raise no_such_event()
        require_if_match(if_match, current)
        return current

    @staticmethod
    def _optimistic(attempt: Callable[[], T], if_match: IfMatch) -> T:
        """Run a read-decide-write ``attempt``. A lost race is decided again on the newer
        version, except under ``If-Match``: the version it names is gone (412 at once)."""
        if if_match is None:
            return retry_on_conflict(attempt, what="event")
        try:
            return attempt()
        except VersionConflict:
            raise event_changed() from None

    def _message(self, payload: Payload, request_id: str | None) -> OutboxEvent:
        """The outbox record of a message."""
        return payload.envelope(request_id, clock=self.clock).to_dict()
