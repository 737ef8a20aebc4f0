"""MongoDB query documents for the storage port: filters, text, geo, sorting and keysets.

Documents are stored with ``id`` as ``_id`` and, when the collection has a geo field, a
GeoJSON point ``_geo`` derived from it (2dsphere index). Near queries select candidates with
``$geoWithin``/``$centerSphere`` and compute the distance in the aggregation with the same
haversine formula as :func:`eventpost.geo.haversine_km`, so distances, the radius
test and distance sorting agree with the SQLite adapter (``$geoNear`` measures on another
Earth radius and cannot be combined with ``$text``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from eventpost.storage._query import DISTANCE, EARTH_RADIUS_KM, SortSpec, text_words
from eventpost.storage.values import AnyOf, CollectionSpec, Near, Range

GEO_FIELD = "_geo"
DISTANCE_FIELD = "_distance"
#: Every BSON type but null: what a unique index's partial filter keeps, so that documents
#: whose field is missing or null are not constrained.
NON_NULL_TYPES = ["string", "number", "bool", "object", "array", "date", "objectId", "binData"]
# The $centerSphere prefilter is a little wider than the radius; the exact haversine decides.
_PREFILTER_SLACK = 1e-9
_RANGE_OPERATORS = (("gte", "$gte"), ("gt", "$gt"), ("lte", "$lte"), ("lt", "$lt"))


def mongo_path(path: str) -> str:
    """The stored path of a field (``id`` is ``_id``)."""
    return "_id" if path == "id" else path


def value_at(raw: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of a stored document (None when missing)."""
    value: Any = raw
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


# -- filters ------------------------------------------------------------------------------


def where_filter(spec: CollectionSpec, where: Mapping[str, Any]) -> dict[str, Any]:
    """The MongoDB filter of a :data:`eventpost.storage.port.Where`."""
    conditions = {}
    for path, cond in where.items():
        if isinstance(cond, Range) and all(getattr(cond, n) is None for n, _ in _RANGE_OPERATORS):
            continue  # no bound: no condition
        conditions[mongo_path(path)] = _condition(path in spec.array_fields, cond)
    return conditions


def _condition(is_array: bool, cond: Any) -> Any:
    if isinstance(cond, AnyOf):
        return {"$in": list(cond.values)}  # None among them matches missing and null
    if isinstance(cond, Range):
        bounds = {op: getattr(cond, name) for name, op in _RANGE_OPERATORS}
        bounds = {op: value for op, value in bounds.items() if value is not None}
        # on an array, one element must satisfy every bound
        return {"$elemMatch": bounds} if is_array else bounds
    return cond  # equality; None matches missing and null; arrays match any element


def text_filter(text: str) -> dict[str, Any]:
    """``$text`` for documents containing every word: each word a quoted phrase, so words
    are ANDed and nothing in them is syntax (words hold only letters and digits)."""
    return {"$text": {"$search": " ".join(f'"{word}"' for word in text_words(text))}}


# -- geo ----------------------------------------------------------------------------------


def geojson_point(lat: float, lng: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lng, lat]}


def geo_prefilter(near: Near) -> dict[str, Any]:
    """Candidates for ``near``: points within a slightly wider spherical cap."""
    angle = near.radius_km / EARTH_RADIUS_KM
    if angle >= 3.0:  # (almost) the whole sphere: every point is a candidate
        return {GEO_FIELD: {"$exists": True}}
    radius = angle * (1 + _PREFILTER_SLACK) + _PREFILTER_SLACK
    return {GEO_FIELD: {"$geoWithin": {"$centerSphere": [[near.lng, near.lat], radius]}}}


def distance_expression(near: Near) -> dict[str, Any]:
    """Aggregation expression: km from ``near`` to the document's point (haversine)."""
    phi = math.radians(near.lat)
    lat = {"$degreesToRadians": {"$arrayElemAt": [f"${GEO_FIELD}.coordinates", 1]}}
    lng = {"$arrayElemAt": [f"${GEO_FIELD}.coordinates", 0]}
    half_dphi = {"$sin": {"$divide": [{"$subtract": [lat, phi]}, 2]}}
    half_dlmb = {"$sin": {"$divide": [{"$degreesToRadians": {"$subtract": [lng, near.lng]}}, 2]}}
    a = {
        "$add": [
            _times("$$hphi", "$$hphi"),
            _times(_times(math.cos(phi), {"$cos": lat}), _times("$$hlmb", "$$hlmb")),
        ]
    }
    distance = _times(2 * EARTH_RADIUS_KM, {"$asin": {"$min": [1.0, {"$sqrt": a}]}})
    return {"$let": {"vars": {"hphi": half_dphi, "hlmb": half_dlmb}, "in": distance}}


def near_pipeline(
    near: Near,
    sort: SortSpec,
    selector: Mapping[str, Any],
    keyset: Mapping[str, Any],
    limit: int,
) -> list[dict[str, Any]]:
    """The aggregation of a near query: candidates matching ``selector``, their distance,
    the radius test, the ``keyset`` (documents after the cursor), sorted, ``limit`` of them."""
    pipeline: list[dict[str, Any]] = [
        {"$match": {**selector, **geo_prefilter(near)}},  # $text must be in the first stage
        {"$addFields": {DISTANCE_FIELD: distance_expression(near)}},
        {"$match": {DISTANCE_FIELD: {"$lte": near.radius_km}}},
    ]
    if keyset:
        pipeline.append({"$match": dict(keyset)})
    pipeline.append({"$sort": dict(mongo_sort(sort))})
    pipeline.append({"$limit": limit})
    return pipeline


def _times(a: Any, b: Any) -> dict[str, Any]:
    return {"$multiply": [a, b]}


# -- sorting and keysets ------------------------------------------------------------------


def sort_field(name: str) -> str:
    """The stored field a sort key orders by."""
    return DISTANCE_FIELD if name == DISTANCE else mongo_path(name)


def mongo_sort(sort: SortSpec) -> list[tuple[str, int]]:
    return [(sort_field(name), direction) for name, direction in sort]


def sort_values(raw: Mapping[str, Any], sort: SortSpec) -> list[Any]:
    """The sort values of a stored document (what a cursor resumes after)."""
    return [value_at(raw, sort_field(name)) for name, _ in sort]


def after_filter(sort: SortSpec, values: Sequence[Any]) -> dict[str, Any]:
    """Documents strictly after the one whose sort values are ``values`` in the order
    ``sort`` (missing and null sort first, as the SQLite adapter does)."""
    alternatives = []
    for i, (name, direction) in enumerate(sort):
        beyond = _beyond(sort_field(name), values[i], direction)
        if beyond is None:
            continue
        equal = [{sort_field(sort[j][0]): values[j]} for j in range(i)]
        alternatives.append({"$and": [*equal, beyond]} if equal else beyond)
    return {"$or": alternatives} if alternatives else {"_id": {"$in": []}}


def _beyond(field: str, value: Any, direction: int) -> dict[str, Any] | None:
    if direction == 1:
        return {field: {"$ne": None}} if value is None else {field: {"$gt": value}}
    if value is None:
        return None  # nothing comes after null in descending order
    return {"$or": [{field: {"$lt": value}}, {field: None}]}
