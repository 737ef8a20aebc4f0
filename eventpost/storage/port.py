"""The storage port: the small interface every service is written against.

Documents are JSON-compatible dicts. Each has an ``id`` (str, given by the caller) and a
``version`` (int, managed by the store: 1 on insert, +1 on every change). Times are stored as
:func:`eventpost.timeutil.format_time` strings, which sort as the times they stand for.

Two adapters implement it: :mod:`eventpost.storage.sqlite` (the embedded default, a file per
service under ``DATA_DIR``) and :mod:`eventpost.storage.mongo` (pymongo, when ``MONGODB_URL``
is set). One contract suite (tests/contract) runs against both.

Domain events go through an outbox: every write method takes ``events``, written in the same
atomic store operation as the change; :class:`eventpost.messaging.relay.OutboxRelay` claims
and publishes them. A write that changes nothing (``delete`` of a missing document,
``update_many``/``delete_many`` matching none) writes no events either. Each event needs a
unique string ``id``. An event whose publish fails is counted (:meth:`Store.outbox_failed`);
at the relay's limit it is parked: kept, never claimed again (:meth:`Store.outbox_parked`).

The values the port speaks in are in :mod:`eventpost.storage.values`, its errors in
:mod:`eventpost.storage.errors`; :mod:`eventpost.storage` exports them all. Stores are opened
with :func:`eventpost.storage.open_store`, collections lazily with
:class:`eventpost.storage.LazyCollection`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from eventpost.storage._query import (
    FindRequest,
    SortSpec,
    check_changes,
    check_new_document,
    check_where,
    normalize_sort,
)
from eventpost.storage.values import (
    CollectionSpec,
    Document,
    OutboxEvent,
    Page,
    ParkedEvent,
    Query,
    Where,
)

#: Checked changes: top-level fields to set (see :meth:`Collection.update`).
Changes = dict[str, Any]
#: The outbox events a write puts into the outbox with its change.
Events = Sequence[OutboxEvent]


class Collection(abc.ABC):
    """One collection of documents.

    The public methods are the port: they check their input the same way for every adapter
    and hand it, checked, to the adapter's methods (the abstract ``_`` ones below)."""

    spec: CollectionSpec

    def insert(self, doc: Document, *, events: Events = ()) -> Document:
        """Store a new document (it must have an ``id``); returns it with ``version`` 1.
        Raises :class:`DuplicateKey`."""
        return self._insert(check_new_document(doc), events)

    @abc.abstractmethod
    def get(self, doc_id: str) -> Document | None:
        """The document with that id, or None."""

    def version_of(self, doc_id: str) -> int | None:
        """The ``version`` of the document with that id, or None when there is none: what
        :meth:`get` would give, without reading (or decoding) the rest of the document.
        Adapters override this default with a lookup of the version alone."""
        doc = self.get(doc_id)
        return None if doc is None else int(doc["version"])

    def update(
        self,
        doc_id: str,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        events: Events = (),
    ) -> Document:
        """Set top-level fields (a value of None stores null); returns the new document.
        Raises :class:`NotFound`, :class:`VersionConflict` when ``expected_version`` is given
        and differs, :class:`DuplicateKey`."""
        return self._update(doc_id, check_changes(changes), expected_version, events)

    def delete(
        self, doc_id: str, *, expected_version: int | None = None, events: Events = ()
    ) -> bool:
        """Remove a document; False when there was none. Raises :class:`VersionConflict`."""
        return self._delete(doc_id, expected_version, events)

    def find(self, query: Query) -> Page:
        """Documents matching the query, sorted and paginated."""
        request = FindRequest.of(query, self.spec)
        if request is None:
            return Page(items=[], next_cursor=None)
        return self._find(request)

    def find_one(self, where: Where) -> Document | None:
        """Any one document matching ``where``."""
        check_where(where)
        return self._find_one(where)

    def count(self, where: Where) -> int:
        """How many documents match ``where``."""
        check_where(where)
        return self._count(where)

    def update_many(self, where: Where, changes: Mapping[str, Any], *, events: Events = ()) -> int:
        """Set fields on every matching document (each gets version + 1); how many changed."""
        check_where(where)
        return self._update_many(where, check_changes(changes), events)

    def delete_many(self, where: Where, *, events: Events = ()) -> int:
        """Remove every matching document; how many went."""
        check_where(where)
        return self._delete_many(where, events)

    def claim(
        self, where: Where, changes: Mapping[str, Any], sort: Sequence[tuple[str, int]] = ()
    ) -> Document | None:
        """Atomically take the first matching document (by ``sort``, then id), apply
        ``changes`` (version + 1) and return the changed document; None when none matches.
        Two concurrent claims never get the same document."""
        check_where(where)
        order = normalize_sort(Query(sort=tuple(sort)))
        return self._claim(where, check_changes(changes), order)

    # -- what an adapter implements (input checked) -----------------------------------------

    @abc.abstractmethod
    def _insert(self, doc: Document, events: Events) -> Document:
        """Insert ``doc`` (its ``version`` left out) with version 1."""

    @abc.abstractmethod
    def _update(
        self, doc_id: str, changes: Changes, expected_version: int | None, events: Events
    ) -> Document:
        """Apply ``changes`` to the document ``doc_id``."""

    @abc.abstractmethod
    def _delete(self, doc_id: str, expected_version: int | None, events: Events) -> bool:
        """Remove the document ``doc_id``."""

    @abc.abstractmethod
    def _find(self, request: FindRequest) -> Page:
        """The page a checked query asks for."""

    @abc.abstractmethod
    def _find_one(self, where: Where) -> Document | None:
        """Any one document matching ``where``."""

    @abc.abstractmethod
    def _count(self, where: Where) -> int:
        """How many documents match ``where``."""

    @abc.abstractmethod
    def _update_many(self, where: Where, changes: Changes, events: Events) -> int:
        """Apply ``changes`` to every document matching ``where``."""

    @abc.abstractmethod
    def _delete_many(self, where: Where, events: Events) -> int:
        """Remove every document matching ``where``."""

    @abc.abstractmethod
    def _claim(self, where: Where, changes: Changes, sort: SortSpec) -> Document | None:
        """Take the first document matching ``where`` in the order ``sort`` (ends with id)."""


class Store(abc.ABC):
    """A service's database."""

    @abc.abstractmethod
    def collection(self, spec: CollectionSpec) -> Collection:
        """The collection of ``spec``, its indexes created if missing (idempotent)."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """Group writes over several collections into one atomic unit (SQLite: one
        transaction; MongoDB: a multi-document transaction, which needs a replica set)."""

    @abc.abstractmethod
    def supports_transactions(self) -> bool:
        """Whether :meth:`transaction` is all or nothing here (SQLite: always; MongoDB: on a
        replica set or a sharded cluster, not on a standalone server). Without it the writes
        of a transaction happen one after the other, and the ones before an error stay."""

    @abc.abstractmethod
    def ping(self) -> None:
        """Raise when the database cannot be reached (used by ``/ready``)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    # -- outbox --------------------------------------------------------------------------

    @abc.abstractmethod
    def outbox_claim(self, owner: str, lease_seconds: float, limit: int = 100) -> list[Document]:
        """Lease up to ``limit`` unpublished outbox events, oldest first, to ``owner``.
        An event whose lease ran out (its relay died) can be claimed again; a parked one
        never is."""

    @abc.abstractmethod
    def outbox_done(self, event_ids: Sequence[str]) -> None:
        """Forget outbox events that were published (confirmed by the broker)."""

    @abc.abstractmethod
    def outbox_failed(self, event_id: str, reason: str, *, park_after: int) -> int:
        """Count one failed publish of the outbox event ``event_id``: its attempt count goes
        up by one and ``reason`` is kept as its last error. When the count reaches
        ``park_after`` the event is parked: kept in the store (see :meth:`outbox_parked`),
        never claimed again. Its lease stays, so it is tried again when the lease ends.
        Returns the attempt count; 0 when no such event waits (published or parked)."""

    @abc.abstractmethod
    def outbox_parked(self) -> list[ParkedEvent]:
        """Every parked outbox event, oldest first."""

    @abc.abstractmethod
    def outbox_pending(self) -> int:
        """How many outbox events wait to be published (parked ones do not)."""

    @abc.abstractmethod
    def iter_outbox(self) -> Iterator[Document]:
        """Every outbox event waiting to be published, oldest first (diagnostics)."""
