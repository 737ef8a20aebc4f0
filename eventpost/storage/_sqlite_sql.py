"""SQL for reading a collection: filters, text and geo conditions, keyset pagination.

Statements use named parameters collected by :class:`Params`, so fragments can be composed
in any order. The row being filtered is aliased ``t``; the geo R*Tree, when joined, ``g``."""

# ruff: noqa: S608 - SQL text here holds only names checked by _query.check_spec and
# _query.check_field; every value is a bound parameter.

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventpost.storage._query import (
    DISTANCE,
    EARTH_RADIUS_KM,
    SortSpec,
    bounding_boxes,
    time_seconds,
)
from eventpost.storage._sqlite_schema import UNBOUNDED_TIME, CollectionSchema, json_expr
from eventpost.storage.values import AnyOf, Near, Range

#: SQL math functions the distance needs (built into most SQLite builds; registered from
#: Python's math module on a build without them).
MATH_FUNCTIONS = {"sin": math.sin, "cos": math.cos, "asin": math.asin, "sqrt": math.sqrt}
MATH_FUNCTIONS["radians"] = math.radians

#: A text or near query whose candidate set (text matches, points in the bounding box) is
#: smaller than this reads all candidates and sorts them; with a bigger set, walking the
#: sort index and checking each row stops as soon as the page is full. Measured with
#: perf/bench_storage.py on 100,000 events.
CANDIDATES_CAP = 2000
#: From this many text matches on, a row's text match is checked row by row (each check
#: costs ~20 us) rather than against the set of every match (building it costs ~0.1 us per
#: match): when matches are that dense, the page fills after a few rows.
DENSE_TEXT = 20000
#: Candidate sets are counted up to this many (both the same, so the smaller can lead).
COUNT_CAP = DENSE_TEXT
#: A query sorted nearest first looks first in the circle expected to hold this many pages
#: of candidates (see SqliteCollection._nearest_first).
NEAREST_FIRST_MARGIN = 8
#: How long (CPU seconds of the thread) walking the table in sort order may take before the
#: query is run again led by its smallest candidate set (a typical combined query walks for
#: 2-6 ms; one whose filters match almost nothing would walk the whole table), and how many
#: SQLite VM steps pass between two looks at the clock. A time budget, not a step count: one
#: step can be a cheap comparison or a JSON parse. Either plan returns the same rows.
WALK_BUDGET_SECONDS = 0.010
PROGRESS_STEPS = 1000

#: Seconds added on each side of a time window of the geo index (see :func:`time_window`).
TIME_MARGIN_SECONDS = 2
#: First and last epoch second of a time window.
TimeWindow = tuple[float, float]

_RANGE_OPERATORS = (("gte", ">="), ("gt", ">"), ("lte", "<="), ("lt", "<"))


@dataclass
class Params:
    """Named parameters of one statement."""

    values: dict[str, Any] = field(default_factory=dict)

    def __call__(self, value: Any) -> str:
        """Bind ``value``; returns its placeholder."""
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f":{name}"


# -- filters ------------------------------------------------------------------------------


def where_sql(
    schema: CollectionSchema, where: Mapping[str, Any], bind: Params, rid: str = "t.rid"
) -> list[str]:
    """One SQL condition per entry of ``where``.

    ``rid`` is the expression of the row's rid that conditions on array fields (looked up
    in the tags table) use: ``g.id`` when the R*Tree leads, so that they are tested before
    the document is read."""
    return [condition_sql(schema, path, cond, bind, rid) for path, cond in where.items()]


def condition_sql(
    schema: CollectionSchema, path: str, cond: Any, bind: Params, rid: str = "t.rid"
) -> str:
    """The SQL condition of one filter entry (see :data:`eventpost.storage.port.Where`)."""
    expr = json_expr(path)
    if isinstance(cond, Range):
        return _range_sql(schema, path, cond, bind, rid)
    values = cond.values if isinstance(cond, AnyOf) else (cond,)
    present = [v for v in values if v is not None]
    parts = [_values_sql(schema, path, present, bind, rid)] if present else []
    if len(present) < len(values):
        parts.append(f"{expr} IS NULL")
    if not parts:
        return "0"  # AnyOf(()) matches nothing
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def _values_sql(
    schema: CollectionSchema, path: str, values: list[Any], bind: Params, rid: str
) -> str:
    """The field (or, for an array field, any element of it) is one of ``values``."""
    if path in schema.spec.array_fields:
        test = _in_sql("x.value", values, bind)
        return _element_sql(schema, path, test, rid)
    expr = json_expr(path)
    if len(values) == 1 and isinstance(values[0], bool) and path not in ("id", "version"):
        # JSON true/false come out of json_extract as 1/0: tell them from numbers
        json_type = "true" if values[0] else "false"
        return f"({expr} = {bind(values[0])} AND json_type(t.doc, '$.{path}') = '{json_type}')"
    return _in_sql(expr, values, bind)


def _in_sql(expr: str, values: list[Any], bind: Params) -> str:
    if len(values) == 1:
        return f"{expr} = {bind(values[0])}"
    return f"{expr} IN ({', '.join(bind(v) for v in values)})"


def _range_sql(schema: CollectionSchema, path: str, cond: Range, bind: Params, rid: str) -> str:
    is_array = path in schema.spec.array_fields
    expr = "x.value" if is_array else json_expr(path)
    bounds = [
        f"{expr} {op} {bind(getattr(cond, name))}"
        for name, op in _RANGE_OPERATORS
        if getattr(cond, name) is not None
    ]
    if not bounds:
        return "1"  # no bound: everything
    test = " AND ".join(bounds)
    return _element_sql(schema, path, test, rid) if is_array else f"({test})"


def _element_sql(schema: CollectionSchema, path: str, test: str, rid: str) -> str:
    assert schema.tags is not None
    return (
        f'EXISTS (SELECT 1 FROM "{schema.tags.name}" AS x '
        f"WHERE x.rid = {rid} AND x.field = '{path}' AND {test})"
    )


def fts_match(words: Sequence[str]) -> str:
    """An FTS5 query for rows containing every word, each an FTS5 string (so searched
    literally: no operator, prefix or column filter can be expressed)."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


def text_filter_sql(fts: str, match_param: str, rid: str, *, row_by_row: bool) -> str:
    """The row ``rid`` is among the text matches, for a query the text does not lead.

    ``row_by_row``: each row is looked up in the FTS index. Otherwise the set of matches is
    built once per statement and each row is looked up in it (the unary ``+`` keeps the
    planner from driving the query from that set). SQLite tests a condition as soon as the
    tables it names are joined: ``rid`` (``t.rid`` or ``g.id``) says when."""
    if row_by_row:
        return f'EXISTS (SELECT 1 FROM "{fts}" WHERE rowid = {rid} AND "{fts}" MATCH {match_param})'
    return f'+{rid} IN (SELECT rowid FROM "{fts}" WHERE "{fts}" MATCH {match_param})'


# -- geo ----------------------------------------------------------------------------------


def time_window(schema: CollectionSchema, where: Mapping[str, Any]) -> TimeWindow | None:
    """The epoch seconds (first, last) the geo index's time dimension must overlap for a
    row to match the :class:`Range` of ``where`` on the collection's ``geo_time_field``, or
    None when that gives no bound (no such field or range, or no bound that is a canonical
    time string: other bounds are left to the filter itself).

    Canonical time strings sort as their whole seconds do, so a string ``s >= lo`` has
    ``seconds(s) >= seconds(lo)`` (likewise for ``>``, ``<=``, ``<``): the window holds
    every match. A margin of :data:`TIME_MARGIN_SECONDS` absorbs any rounding."""
    path = schema.spec.geo_time_field
    cond = where.get(path) if path is not None and schema.geo_time is not None else None
    if not isinstance(cond, Range):
        return None
    lows = [time_seconds(v) for v in (cond.gte, cond.gt)]
    highs = [time_seconds(v) for v in (cond.lte, cond.lt)]
    low = max((s for s in lows if s is not None), default=None)
    high = min((s for s in highs if s is not None), default=None)
    if low is None and high is None:
        return None
    return (
        -UNBOUNDED_TIME if low is None else float(low - TIME_MARGIN_SECONDS),
        UNBOUNDED_TIME if high is None else float(high + TIME_MARGIN_SECONDS),
    )


def box_sql(near: Near, bind: Params, alias: str = "g", window: TimeWindow | None = None) -> str:
    """The R*Tree entry lies in the bounding box(es) of the circle of ``near`` (and, with a
    ``window``, overlaps it in the time dimension)."""
    boxes = bounding_boxes(near)
    min_lat, max_lat = boxes[0][0], boxes[0][1]  # every box spans the same latitudes
    lat = f"{alias}.max_lat >= {bind(min_lat)} AND {alias}.min_lat <= {bind(max_lat)}"
    if window is not None:
        lat += f" AND {alias}.max_t >= {bind(window[0])} AND {alias}.min_t <= {bind(window[1])}"
    lngs = [
        f"{alias}.max_lng >= {bind(west)} AND {alias}.min_lng <= {bind(east)}"
        for _, _, west, east in boxes
        if (west, east) != (-180.0, 180.0)
    ]
    if not lngs:
        return lat
    if len(lngs) == 1:
        return f"{lat} AND {lngs[0]}"
    return f"{lat} AND (" + " OR ".join(f"({s})" for s in lngs) + ")"


def distance_sql(near: Near, bind: Params) -> str:
    """The exact distance in km from ``near`` to the joined R*Tree entry ``g``: the haversine
    of :func:`eventpost.geo.haversine_km`, in SQL math functions (a Python
    function would cost several times more per candidate)."""
    phi = bind(math.radians(near.lat))
    cos_phi = bind(math.cos(math.radians(near.lat)))
    lng = bind(near.lng)
    half_dphi = f"sin((radians(g.lat) - {phi}) / 2)"
    half_dlmb = f"sin(radians(g.lng - {lng}) / 2)"
    cross = f"({cos_phi} * cos(radians(g.lat))) * ({half_dlmb} * {half_dlmb})"
    a = f"{half_dphi} * {half_dphi} + {cross}"
    return f"({2 * EARTH_RADIUS_KM!r} * asin(min(1.0, sqrt({a}))))"


# -- sorting and keyset pagination --------------------------------------------------------


def sort_exprs(sort: SortSpec, distance: str | None) -> list[str]:
    """The SQL expression of each sort key."""
    return [distance if name == DISTANCE and distance else json_expr(name) for name, _ in sort]


def order_by_sql(exprs: Sequence[str], sort: SortSpec) -> str:
    return ", ".join(
        f"{e} {'ASC' if d == 1 else 'DESC'}" for e, (_, d) in zip(exprs, sort, strict=True)
    )


def after_sql(exprs: Sequence[str], sort: SortSpec, values: Sequence[Any], bind: Params) -> str:
    """Rows strictly after the row whose sort values are ``values``, in the order ``sort``
    (NULL sorts first, as in MongoDB). A leading bound on the first key lets the index seek."""
    params = [None if v is None else bind(v) for v in values]
    alternatives = []
    for i, (expr, (_, direction)) in enumerate(zip(exprs, sort, strict=True)):
        equal = [_same(exprs[j], params[j]) for j in range(i)]
        alternatives.append(" AND ".join([*equal, _beyond(expr, params[i], direction)]))
    condition = "(" + " OR ".join(f"({a})" for a in alternatives) + ")"
    first, (_, direction) = params[0], sort[0]
    if first is not None and direction == 1:
        condition = f"{exprs[0]} >= {first} AND {condition}"
    return condition


def _same(expr: str, param: str | None) -> str:
    return f"{expr} IS NULL" if param is None else f"{expr} = {param}"


def _beyond(expr: str, param: str | None, direction: int) -> str:
    if direction == 1:
        return f"{expr} IS NOT NULL" if param is None else f"{expr} > {param}"
    return "0" if param is None else f"({expr} < {param} OR {expr} IS NULL)"
