"""The notifications service's repository over the storage port: :class:`NotificationsStore`.

Two collections. ``notifications``: indexes ``(status, send_at)`` for the dispatcher's "due"
claims, ``(owner, send_at)`` for a user's list, ``(event_id,)`` for reactions to event changes;
documents are described in :mod:`services.notifications.domain`. ``event_tombstones``: one
``{id: <event id>, deleted_at}`` per deleted event, recorded by the ``event.deleted`` consumer
before it cancels and read by whoever creates or sends a reminder afterwards, so a reminder
made in the instant after its event's deletion was handled is cancelled all the same (see
:mod:`services.notifications.consumers`). Event ids are never reused, so tombstones are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from eventpost.storage import (
    CollectionSpec,
    DuplicateKey,
    LazyCollection,
    NotFound,
    OutboxEvent,
    Page,
    Query,
    Range,
    Store,
)
from eventpost.storage.optimistic import DEFAULT_TRIES, retry_on_conflict
from services.notifications.domain import SCHEDULED

NOTIFICATIONS = CollectionSpec(
    name="notifications",
    indexes=(("status", "send_at"), ("owner", "send_at"), ("event_id",)),
)

TOMBSTONES = CollectionSpec(name="event_tombstones")

_SCAN_PAGE = 100

#: What a writer decides for one reminder as it is now: the changes and the outbox events of
#: the write, or None when nothing is to be written.
Decision = tuple[Mapping[str, Any], Sequence[OutboxEvent]] | None


class NotificationsStore:
    """Reminders in ``store`` (the collection opened, indexes and all, on first use).

    Every change of a reminder goes through :meth:`change` (optimistic: read, decide, write
    with the version read); the outbox events of a change are written with it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.collection = LazyCollection(store, NOTIFICATIONS)
        self.tombstones = LazyCollection(store, TOMBSTONES)

    # -- reads ------------------------------------------------------------------------------

    def get(self, reminder_id: str) -> dict[str, Any] | None:
        """The reminder, or None."""
        return self.collection.get(reminder_id)

    def get_owned(self, reminder_id: str, owner: str) -> dict[str, Any] | None:
        """The reminder if it exists and belongs to ``owner``; None otherwise (another user's
        reminder looks exactly like a missing one)."""
        doc = self.collection.get(reminder_id)
        if doc is None or doc.get("owner") != owner:
            return None
        return doc

    def list_owned(
        self,
        owner: str,
        *,
        status: str | None = None,
        event_id: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page:
        """A page of ``owner``'s reminders, soonest ``send_at`` first (``InvalidCursor`` for
        a cursor of another list)."""
        where: dict[str, Any] = {"owner": owner}
        if status is not None:
            where["status"] = status
        if event_id is not None:
            where["event_id"] = event_id
        query = Query(where=where, sort=(("send_at", 1),), limit=limit, cursor=cursor)
        return self.collection.find(query)

    def iter_matching(self, where: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """Every reminder matching ``where``, page by page (ordered by id)."""
        cursor: str | None = None
        while True:
            page = self.collection.find(Query(where=dict(where), limit=_SCAN_PAGE, cursor=cursor))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def scheduled_ids_of(self, event_id: str) -> list[str]:
        """The ids of the event's ``scheduled`` reminders (read first, changed one by one)."""
        where = {"event_id": event_id, "status": SCHEDULED}
        return [doc["id"] for doc in self.iter_matching(where)]

    def next_scheduled_after(self, now: str) -> dict[str, Any] | None:
        """The scheduled reminder due soonest after ``now`` (stored form), or None."""
        query = Query(
            where={"status": SCHEDULED, "send_at": Range(gt=now)}, sort=(("send_at", 1),), limit=1
        )
        items = self.collection.find(query).items
        return items[0] if items else None

    def tombstone_of(self, event_id: str) -> dict[str, Any] | None:
        """The tombstone of a deleted event (``{id, deleted_at}``), or None."""
        return self.tombstones.get(event_id)

    # -- writes -----------------------------------------------------------------------------

    def record_tombstone(self, event_id: str, deleted_at: str) -> bool:
        """Remember that the event is deleted; False when it already was (idempotent)."""
        try:
            self.tombstones.insert({"id": event_id, "deleted_at": deleted_at})
        except DuplicateKey:
            return False
        return True

    def insert(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Store a new reminder; returns it as stored (with its version)."""
        return self.collection.insert(dict(doc))

    def change(
        self,
        reminder_id: str,
        decide: Callable[[dict[str, Any] | None], Decision],
        *,
        current: dict[str, Any] | None = None,
        tries: int = DEFAULT_TRIES,
    ) -> tuple[dict[str, Any], Mapping[str, Any]] | None:
        """Read, decide, write: ``decide`` gets the reminder as it is now (``current`` the
        first time, when given; None when it is gone) and says what to write; the write is
        conditional on the version read, and a lost race decides again on what is there
        then. Returns the reminder as stored and the changes written, or None when there was
        nothing to write (or the reminder went meanwhile). After ``tries`` lost races
        :class:`~eventpost.storage.optimistic.KeptChanging` (409) is raised."""
        first = [current] if current is not None else []

        def attempt() -> tuple[dict[str, Any], Mapping[str, Any]] | None:
            doc = first.pop() if first else self.collection.get(reminder_id)
            decision = decide(doc)
            if doc is None or decision is None:
                return None
            changes, events = decision
            try:
                stored = self.collection.update(
                    reminder_id, changes, expected_version=doc["version"], events=events
                )
            except NotFound:
                return None
            return stored, changes

        return retry_on_conflict(attempt, what="reminder", tries=tries)

    def delete(self, reminder_id: str) -> bool:
        """Forget the reminder (whatever its status); False if it was gone."""
        return self.collection.delete(reminder_id)

    def delete_owned_by(self, owner: str) -> int:
        """Forget every reminder of ``owner``; returns how many."""
        return self.collection.delete_many({"owner": owner})

    def claim_due(self, *, now: str, owner: str, lease_until: str) -> dict[str, Any] | None:
        """Atomically lease the most overdue claimable reminder (scheduled, due at ``now``,
        nobody's lease) to ``owner``; None if none."""
        return self.collection.claim(
            {"status": SCHEDULED, "send_at": Range(lte=now), "lease_until": Range(lt=now)},
            {"lease_owner": owner, "lease_until": lease_until},
            sort=(("send_at", 1),),
        )

    def transaction(self) -> AbstractContextManager[None]:
        """The store's transaction (several writes committed together)."""
        return self.store.transaction()
