"""Collections whose indexes are created on first use.

``Store.collection(spec)`` creates indexes, which on MongoDB means talking to the server. A
service that calls it while building its app cannot even start when its database is down;
with :class:`LazyCollection` it starts, ``/ready`` answers 503 until the database is back, and
the first request that needs the collection creates the indexes."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from eventpost.storage.port import (
    Collection,
    CollectionSpec,
    Document,
    OutboxEvent,
    Page,
    Query,
    Store,
    Where,
)


class LazyCollection(Collection):
    """The collection of ``spec`` in ``store``, opened (indexes and all) on first use."""

    def __init__(self, store: Store, spec: CollectionSpec) -> None:
        self.spec = spec
        self._store = store
        self._real: Collection | None = None
        self._lock = threading.Lock()

    def _coll(self) -> Collection:
        if self._real is None:
            with self._lock:
                if self._real is None:
                    self._real = self._store.collection(self.spec)
        return self._real

    def insert(self, doc: Document, *, events: Sequence[OutboxEvent] = ()) -> Document:
        return self._coll().insert(doc, events=events)

    def get(self, doc_id: str) -> Document | None:
        return self._coll().get(doc_id)

    def update(
        self,
        doc_id: str,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> Document:
        return self._coll().update(
            doc_id, changes, expected_version=expected_version, events=events
        )

    def delete(
        self,
        doc_id: str,
        *,
        expected_version: int | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        return self._coll().delete(doc_id, expected_version=expected_version, events=events)

    def find(self, query: Query) -> Page:
        return self._coll().find(query)

    def find_one(self, where: Where) -> Document | None:
        return self._coll().find_one(where)

    def count(self, where: Where) -> int:
        return self._coll().count(where)

    def update_many(
        self, where: Where, changes: Mapping[str, Any], *, events: Sequence[OutboxEvent] = ()
    ) -> int:
        return self._coll().update_many(where, changes, events=events)

    def delete_many(self, where: Where, *, events: Sequence[OutboxEvent] = ()) -> int:
        return self._coll().delete_many(where, events=events)

    def claim(
        self,
        where: Where,
        changes: Mapping[str, Any],
        sort: Sequence[tuple[str, int]] = (),
    ) -> Document | None:
        return self._coll().claim(where, changes, sort)
