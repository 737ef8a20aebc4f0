"""The values the storage port speaks in: documents, filters, queries, pages, collection specs
and parked outbox events (see :mod:`eventpost.storage.port`; its errors are in
:mod:`eventpost.storage.errors`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Document = dict[str, Any]
#: An outbox record: a message envelope (see :mod:`eventpost.messaging.envelope`) as a dict
#: with at least ``id``, ``type``, ``occurred_at``, ``request_id`` and ``payload``.
OutboxEvent = Mapping[str, Any]


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
