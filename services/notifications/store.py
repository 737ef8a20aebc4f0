"""The notifications service's collection over the storage port, and its repository functions.

One collection, ``notifications``. Indexes: ``(status, send_at)`` for the dispatcher's "due"
claims, ``(owner, send_at)`` for a user's list, ``(event_id,)`` for reactions to event changes.
Documents are described in :mod:`services.notifications.domain`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from eventpost.storage import (
    Collection,
    CollectionSpec,
    LazyCollection,
    Page,
    Query,
    Range,
    Store,
)

NOTIFICATIONS = CollectionSpec(
    name="notifications",
    indexes=(("status", "send_at"), ("owner", "send_at"), ("event_id",)),
)

_SCAN_PAGE = 100


def notifications(store: Store) -> Collection:
    """The ``notifications`` collection (indexes created if missing)."""
    return LazyCollection(store, NOTIFICATIONS)


def get_owned(coll: Collection, reminder_id: str, owner: str) -> dict[str, Any] | None:
    """The reminder if it exists and belongs to ``owner``; None otherwise (another user's
    reminder looks exactly like a missing one)."""
    doc = coll.get(reminder_id)
    if doc is None or doc.get("owner") != owner:
        return None
    return doc


def list_owned(
    coll: Collection,
    owner: str,
    *,
    status: str | None = None,
    event_id: str | None = None,
    limit: int = 20,
    cursor: str | None = None,
) -> Page:
    """A page of ``owner``'s reminders, soonest ``send_at`` first."""
    where: dict[str, Any] = {"owner": owner}
    if status is not None:
        where["status"] = status
    if event_id is not None:
        where["event_id"] = event_id
    return coll.find(Query(where=where, sort=(("send_at", 1),), limit=limit, cursor=cursor))


def iter_matching(coll: Collection, where: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every reminder matching ``where``, page by page (ordered by id)."""
    cursor: str | None = None
    while True:
        page = coll.find(Query(where=dict(where), limit=_SCAN_PAGE, cursor=cursor))
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


def due_where(now: str) -> dict[str, Any]:
    """Reminders the dispatcher may claim at ``now``: scheduled, due, nobody's lease."""
    return {"status": "scheduled", "send_at": Range(lte=now), "lease_until": Range(lt=now)}


def claim_due(coll: Collection, *, now: str, owner: str, lease_until: str) -> dict[str, Any] | None:
    """Atomically lease the most overdue claimable reminder to ``owner``; None if none."""
    return coll.claim(
        due_where(now),
        {"lease_owner": owner, "lease_until": lease_until},
        sort=(("send_at", 1),),
    )
