"""Collections whose indexes are created on first use.

``Store.collection(spec)`` creates indexes, which on MongoDB means talking to the server. A
service that calls it while building its app cannot even start when its database is down;
with :class:`LazyCollection` it starts, ``/ready`` answers 503 until the database is back, and
the first request that needs the collection creates the indexes."""

from __future__ import annotations

import threading

from eventpost.storage._query import FindRequest, SortSpec
from eventpost.storage.port import Changes, Collection, Events, Store
from eventpost.storage.values import CollectionSpec, Document, Page, Where


class LazyCollection(Collection):
    """The collection of ``spec`` in ``store``, opened (indexes and all) on first use.

    The port's methods check their input here, once; the opened collection does the rest."""

    def __init__(self, store: Store, spec: CollectionSpec) -> None:
        self.spec = spec
        self._store = store
        self._opened: Collection | None = None
        self._lock = threading.Lock()

    @property
    def opened(self) -> Collection:
        """The store's collection, opened on first use."""
        if self._opened is None:
            with self._lock:
                if self._opened is None:
                    self._opened = self._store.collection(self.spec)
        return self._opened

    def get(self, doc_id: str) -> Document | None:
        return self.opened.get(doc_id)

    def version_of(self, doc_id: str) -> int | None:
        return self.opened.version_of(doc_id)

    def _insert(self, doc: Document, events: Events) -> Document:
        return self.opened._insert(doc, events)

    def _update(
        self, doc_id: str, changes: Changes, expected_version: int | None, events: Events
    ) -> Document:
        return self.opened._update(doc_id, changes, expected_version, events)

    def _delete(self, doc_id: str, expected_version: int | None, events: Events) -> bool:
        return self.opened._delete(doc_id, expected_version, events)

    def _find(self, request: FindRequest) -> Page:
        return self.opened._find(request)

    def _find_one(self, where: Where) -> Document | None:
        return self.opened._find_one(where)

    def _count(self, where: Where) -> int:
        return self.opened._count(where)

    def _update_many(self, where: Where, changes: Changes, events: Events) -> int:
        return self.opened._update_many(where, changes, events)

    def _delete_many(self, where: Where, events: Events) -> int:
        return self.opened._delete_many(where, events)

    def _claim(self, where: Where, changes: Changes, sort: SortSpec) -> Document | None:
        return self.opened._claim(where, changes, sort)
