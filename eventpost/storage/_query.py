"""Backend-neutral pieces shared by the storage adapters: name and input checks, sort
normalisation, opaque keyset cursors, the words of a text search, bounding boxes of near
queries, and :class:`FindRequest` (a query once checked).

Both adapters use these so that they agree exactly: the same words are searched, the same
distance is computed (:func:`eventpost.geo.haversine_km`, on a sphere of
:data:`eventpost.geo.EARTH_RADIUS_KM`) and a cursor means the same thing."""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from eventpost.geo import EARTH_RADIUS_KM
from eventpost.storage.errors import InvalidCursor
from eventpost.storage.values import AnyOf, CollectionSpec, Document, Near, Page, Query, Range

#: The special sort field of :class:`Query` that orders by distance from ``near``.
DISTANCE = "distance"

_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*$")
# A word is a run of letters and digits; everything else separates words, as in the
# tokenizers of both backends (SQLite FTS5 unicode61, MongoDB text indexes).
_WORD = re.compile(r"[^\W_]+")
_SCALARS = (str, int, float, bool, type(None))
#: The shape of :func:`eventpost.timeutil.format_time` strings.
_CANONICAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z", re.ASCII)
# Degrees added around a bounding box so that rounding never loses a point on its edge.
_BOX_MARGIN_DEG = 1e-6

SortSpec = tuple[tuple[str, int], ...]
_Row = TypeVar("_Row")
Box = tuple[float, float, float, float]  # min_lat, max_lat, min_lng, max_lng


# -- names and inputs ---------------------------------------------------------------------


def check_field(path: str) -> str:
    """``path`` if it is a dotted field path of identifiers (``place.lat``), else ValueError.

    Paths end up inside SQL expressions and index definitions, so nothing else is allowed."""
    if not isinstance(path, str) or not _FIELD.match(path):
        raise ValueError(f"invalid field path {path!r}")
    return path


def check_spec(spec: CollectionSpec) -> CollectionSpec:
    """``spec`` if its name and every field in it are valid, else ValueError."""
    if not _NAME.match(spec.name) or spec.name.lower() in ("outbox", "sqlite"):
        raise ValueError(f"invalid collection name {spec.name!r}")
    fields = [f for group in (*spec.unique, *spec.indexes) for f in group]
    fields += [*spec.array_fields, *spec.text_fields]
    if spec.geo_field is not None:
        fields.append(spec.geo_field)
    if spec.geo_time_field is not None:
        if spec.geo_field is None:
            raise ValueError("geo_time_field needs geo_field")
        fields.append(spec.geo_time_field)
    for name in fields:
        check_field(name)
    if any(not group for group in (*spec.unique, *spec.indexes)):
        raise ValueError("an index needs at least one field")
    return spec


def time_seconds(value: Any) -> int | None:
    """Whole epoch seconds of ``value`` when it is a canonical time string
    (:func:`eventpost.timeutil.format_time`, a real date and time), else None.

    Such strings sort as these seconds do (fixed width), so a range of them is a range of
    seconds; the SQLite adapter computes the same number for stored values."""
    if not isinstance(value, str) or not _CANONICAL_TIME.fullmatch(value):
        return None
    try:
        moment = datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return calendar.timegm(moment.utctimetuple())


def check_new_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` ready to insert (without ``version``), or ValueError."""
    doc_id = doc.get("id")
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError("a document needs a non-empty string id")
    _check_top_level_names(doc)
    return {k: v for k, v in doc.items() if k != "version"}


def check_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` as a dict of top-level fields to set, or ValueError."""
    for name in changes:
        if name in ("id", "version"):
            raise ValueError(f"{name} cannot be changed")
        if not isinstance(name, str) or "." in name or name.startswith("$"):
            raise ValueError(f"changes set top-level fields; {name!r} is not one")
    _check_top_level_names(changes)
    return dict(changes)


def _check_top_level_names(doc: Mapping[str, Any]) -> None:
    for name in doc:
        if not isinstance(name, str) or name.startswith(("_", "$")):
            raise ValueError(f"field names starting with _ or $ are reserved: {name!r}")


def check_where(where: Mapping[str, Any]) -> None:
    """ValueError unless every condition of ``where`` is one the port defines."""
    for path, cond in where.items():
        check_field(path)
        if isinstance(cond, AnyOf):
            values = cond.values
        elif isinstance(cond, Range):
            values = (cond.gte, cond.gt, cond.lte, cond.lt)
        else:
            values = (cond,)
        for value in values:
            if not isinstance(value, _SCALARS):
                raise ValueError(f"{path}: filters compare scalars, not {type(value).__name__}")


def check_near(near: Near) -> None:
    """ValueError unless ``near`` is a point on the globe with a radius >= 0."""
    if not (-90.0 <= near.lat <= 90.0 and -180.0 <= near.lng <= 180.0):
        raise ValueError("near: lat must be in [-90, 90] and lng in [-180, 180]")
    if not near.radius_km >= 0:
        raise ValueError("near: radius_km must be >= 0")


def geo_point(doc: Mapping[str, Any], path: str) -> tuple[float, float] | None:
    """(lat, lng) of the geo object at ``path`` when it holds a valid point, else None."""
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if not isinstance(value, Mapping):
        return None
    lat, lng = value.get("lat"), value.get("lng")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in (lat, lng)):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lng <= 180.0):
        return None
    return float(lat), float(lng)


# -- sorting and cursors ------------------------------------------------------------------


def normalize_sort(query: Query) -> SortSpec:
    """The query's sort with ``id`` appended as the final tie-breaker.

    The tie-breaker follows the direction of the last sort key, so that an index on
    (field, id) serves both directions."""
    sort: list[tuple[str, int]] = []
    for name, direction in query.sort:
        if direction not in (1, -1):
            raise ValueError(f"sort direction of {name!r} must be 1 or -1")
        if name == DISTANCE:
            if query.near is None:
                raise ValueError("sorting by distance needs near")
        else:
            check_field(name)
        sort.append((name, direction))
        if name == "id":
            return tuple(sort)
    sort.append(("id", sort[-1][1] if sort else 1))
    return tuple(sort)


def check_limit(limit: int) -> int:
    """``limit`` if it is a positive int, else ValueError."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError("limit must be a positive integer")
    return limit


def encode_cursor(sort: SortSpec, values: Sequence[Any]) -> str:
    """An opaque cursor that resumes after the row whose sort values are ``values``."""
    raw = json.dumps({"s": [list(s) for s in sort], "k": list(values)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, sort: SortSpec) -> list[Any]:
    """The sort values a cursor of a query sorted by ``sort`` resumes after.

    Raises :class:`InvalidCursor` when it is not such a cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidCursor("malformed cursor") from exc
    if not isinstance(data, dict) or data.get("s") != [list(s) for s in sort]:
        raise InvalidCursor("the cursor belongs to another query")
    values = data.get("k")
    if not isinstance(values, list) or len(values) != len(sort):
        raise InvalidCursor("malformed cursor")
    if not all(isinstance(v, _SCALARS) for v in values) or not isinstance(values[-1], str):
        raise InvalidCursor("malformed cursor")
    return values


# -- text ---------------------------------------------------------------------------------


def text_words(text: str) -> list[str]:
    """The words a text search looks for: runs of letters and digits, in order, repeated
    words once. Punctuation and operators are separators, never syntax."""
    return list(dict.fromkeys(_WORD.findall(text)))


# -- geometry -----------------------------------------------------------------------------


def bounding_boxes(near: Near) -> list[Box]:
    """Lat/lng boxes that together contain every point within ``near.radius_km``.

    A circle over a pole spans every longitude; one crossing the antimeridian (lng ±180) is
    split into a box on each side."""
    angle = near.radius_km / EARTH_RADIUS_KM
    if angle >= math.pi / 2:
        return [(-90.0, 90.0, -180.0, 180.0)]
    dlat = math.degrees(angle) + _BOX_MARGIN_DEG
    min_lat, max_lat = near.lat - dlat, near.lat + dlat
    if min_lat <= -90.0 or max_lat >= 90.0:
        return [(max(min_lat, -90.0), min(max_lat, 90.0), -180.0, 180.0)]
    ratio = math.sin(angle) / math.cos(math.radians(near.lat))
    if ratio >= 1.0:
        return [(min_lat, max_lat, -180.0, 180.0)]
    dlng = math.degrees(math.asin(ratio)) + _BOX_MARGIN_DEG
    west, east = near.lng - dlng, near.lng + dlng
    if west < -180.0:
        return [(min_lat, max_lat, west + 360.0, 180.0), (min_lat, max_lat, -180.0, east)]
    if east > 180.0:
        return [(min_lat, max_lat, west, 180.0), (min_lat, max_lat, -180.0, east - 360.0)]
    return [(min_lat, max_lat, west, east)]


# -- a checked query ----------------------------------------------------------------------


@dataclass(frozen=True)
class FindRequest:
    """A :class:`Query` once checked: its full sort (id last), limit, the sort values its
    cursor resumes after and the words of its text."""

    query: Query
    sort: SortSpec
    after: list[Any] | None
    words: list[str] | None

    @classmethod
    def of(cls, query: Query, spec: CollectionSpec) -> FindRequest | None:
        """The checked form of ``query`` on a collection of ``spec`` (ValueError or
        :class:`InvalidCursor` when it is not a valid one); None when it has a text without
        any word, which matches nothing."""
        sort = normalize_sort(query)
        check_limit(query.limit)
        check_where(query.where)
        if query.near is not None:
            check_near(query.near)
            if not spec.geo_field:
                raise ValueError(f"collection {spec.name!r} has no geo_field")
        if query.text is not None and not spec.text_fields:
            raise ValueError(f"collection {spec.name!r} has no text_fields")
        after = decode_cursor(query.cursor, sort) if query.cursor else None
        words = text_words(query.text) if query.text is not None else None
        if words == []:
            return None
        return cls(query, sort, after, words)

    @property
    def limit(self) -> int:
        return self.query.limit

    def page(
        self,
        rows: Sequence[_Row],
        document: Callable[[_Row], Document],
        sort_values: Callable[[_Row], Sequence[Any]],
    ) -> Page:
        """The page of ``rows`` (up to one more than the limit, in order): their documents,
        and a cursor after the last one when there are more."""
        items = [document(row) for row in rows[: self.limit]]
        next_cursor = None
        if len(rows) > self.limit:
            next_cursor = encode_cursor(self.sort, sort_values(rows[self.limit - 1]))
        return Page(items=items, next_cursor=next_cursor)
