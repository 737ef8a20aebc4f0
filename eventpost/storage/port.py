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
unique string ``id``.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

Document = dict[str, Any]
#: An outbox record: a message envelope (see :mod:`eventpost.messaging.envelope`) as a dict
#: with at least ``id``, ``type``, ``occurred_at``, ``request_id`` and ``payload``.
OutboxEvent = Mapping[str, Any]


class StorageError(Exception):
    """Base of every error the storage port raises."""


class DuplicateKey(StorageError):
    """A unique constraint (including the ``id``) would be broken."""

    def __init__(self, fields: Sequence[str] = ()) -> None:
        self.fields = tuple(fields)
        super().__init__(f"duplicate key on {', '.join(self.fields) or 'a unique index'}")


class NotFound(StorageError):
    """No document with that id."""


class VersionConflict(StorageError):
    """The document's version is not the one the caller expected (optimistic locking)."""


class InvalidCursor(StorageError, ValueError):
    """:attr:`Query.cursor` is not a ``next_cursor`` of a query with the same sort (malformed,
    tampered with, or from another query): a bad request parameter (422)."""


@dataclass(frozen=True)
class AnyOf:
    """Filter: the field equals any of ``values`` (for array fields: any element does)."""

    values: tuple[Any, ...]

    def __init__(self, values: Sequence[Any]) -> None:
        object.__setattr__(self, "values", tuple(values))


@dataclass(frozen=True)
class Range:
    """Filter: the field lies in a range; unset bounds are open."""

    gte: Any = None
    gt: Any = None
    lte: Any = None
    lt: Any = None


@dataclass(frozen=True)
class Near:
    """Filter: the collection's geo point lies within ``radius_km`` of (lat, lng).

    Results of a query with ``near`` carry ``distance_km`` (great-circle distance on a sphere
    of radius 6371.0088 km) on each document."""

    lat: float
    lng: float
    radius_km: float


#: A filter: dotted field path -> a plain value (equality; ``None`` matches missing or null),
#: an :class:`AnyOf` or a :class:`Range`.
Where = Mapping[str, Any]


@dataclass(frozen=True)
class Query:
    """What :meth:`Collection.find` looks for.

    ``sort`` is a sequence of (field, 1 | -1); the special field ``distance`` sorts by
    distance and needs ``near``. ``id`` is always appended as the final tie-breaker, so
    pagination is stable. ``text`` matches documents whose text fields contain every word of
    it (case-insensitively; the words are searched literally, never as operators or patterns).
    A word is a run of letters and digits; everything else only separates words, so a text
    without any word (e.g. ``"*?"``) matches nothing.
    ``cursor`` is the ``next_cursor`` of the previous page of the same query (else
    :class:`InvalidCursor`). ``limit`` must be >= 1.

    Filters compare scalars (str, int, float, bool, None); a field filtered or sorted on
    should hold one type across the collection. Top-level field names starting with ``_`` or
    ``$`` are reserved for the adapters (ValueError)."""

    where: Where = field(default_factory=dict)
    text: str | None = None
    near: Near | None = None
    sort: tuple[tuple[str, int], ...] = ()
    limit: int = 20
    cursor: str | None = None


@dataclass
class Page:
    """One page of results; ``next_cursor`` is None on the last page."""

    items: list[Document]
    next_cursor: str | None


@dataclass(frozen=True)
class CollectionSpec:
    """A collection and the indexes it needs.

    - ``unique``: field tuples that must be unique together; documents where a field is
      missing or null are not constrained.
    - ``indexes``: non-unique field tuples the service filters and sorts on.
    - ``array_fields``: fields holding lists of scalars; equality and :class:`AnyOf` on them
      match any element.
    - ``text_fields``: the fields :attr:`Query.text` searches.
    - ``geo_field``: dotted path of a ``{"lat": float, "lng": float, ...}`` object that
      :attr:`Query.near` measures from.
    - ``geo_time_field``: optionally, a time field (holding
      :func:`eventpost.timeutil.format_time` strings) indexed together with the geo point,
      so that a ``near`` query with a :class:`Range` on it is one look-up (an index hint:
      results are the same with or without it; needs ``geo_field``).
    """

    name: str
    unique: tuple[tuple[str, ...], ...] = ()
    indexes: tuple[tuple[str, ...], ...] = ()
    array_fields: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ()
    geo_field: str | None = None
    geo_time_field: str | None = None


@dataclass(frozen=True)
class ParkedEvent:
    """An outbox event given up on after ``attempts`` failed publishes (see
    :meth:`Store.outbox_failed`); ``reason`` is the error of the last one."""

    event: Document
    attempts: int
    reason: str


class Collection(abc.ABC):
    """One collection of documents."""

    spec: CollectionSpec

    @abc.abstractmethod
    def insert(self, doc: Document, *, events: Sequence[OutboxEvent] = ()) -> Document:
        """Store a new document (it must have an ``id``); returns it with ``version`` 1.
        Raises :class:`DuplicateKey`."""

    @abc.abstractmethod
    def get(self, doc_id: str) -> Document | None:
        """The document with that id, or None."""

    @abc.abstractmethod
    def update(
        self,
        doc_id: str,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> Document:
        """Set top-level fields (a value of None stores null); returns the new document.
        Raises :class:`NotFound`, :class:`VersionConflict` when ``expected_version`` is given
        and differs, :class:`DuplicateKey`."""

    @abc.abstractmethod
    def delete(
        self,
        doc_id: str,
        *,
        expected_version: int | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        """Remove a document; False when there was none. Raises :class:`VersionConflict`."""

    @abc.abstractmethod
    def find(self, query: Query) -> Page:
        """Documents matching the query, sorted and paginated."""

    @abc.abstractmethod
    def find_one(self, where: Where) -> Document | None:
        """Any one document matching ``where``."""

    @abc.abstractmethod
    def count(self, where: Where) -> int:
        """How many documents match ``where``."""

    @abc.abstractmethod
    def update_many(
        self,
        where: Where,
        changes: Mapping[str, Any],
        *,
        events: Sequence[OutboxEvent] = (),
    ) -> int:
        """Set fields on every matching document (each gets version + 1); how many changed."""

    @abc.abstractmethod
    def delete_many(self, where: Where, *, events: Sequence[OutboxEvent] = ()) -> int:
        """Remove every matching document; how many went."""

    @abc.abstractmethod
    def claim(
        self,
        where: Where,
        changes: Mapping[str, Any],
        sort: Sequence[tuple[str, int]] = (),
    ) -> Document | None:
        """Atomically take the first matching document (by ``sort``, then id), apply
        ``changes`` (version + 1) and return the changed document; None when none matches.
        Two concurrent claims never get the same document."""


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
