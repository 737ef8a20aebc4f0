"""How the SQLite adapter answers a find: the plan (which table leads the join) and the
statement that reads a page.

Candidate generators are the R*Tree (near, and its time dimension when the query has a range
on the ``geo_time_field``) and the FTS index (text). :class:`SqliteFinder` counts the
candidates of each (capped), lets the smallest set lead when it is small or the sort cannot
come from an index, and otherwise walks the table in sort order under a CPU budget, falling
back to the smallest set when the budget runs out. Both plans return the same rows."""

# ruff: noqa: S608 - SQL text here holds only names checked by _query.check_spec and
# _query.check_field; every value is a bound parameter.

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from eventpost.storage._query import DISTANCE, FindRequest
from eventpost.storage._sqlite_schema import CollectionSchema
from eventpost.storage._sqlite_sql import (
    CANDIDATES_CAP,
    COUNT_CAP,
    DENSE_TEXT,
    NEAREST_FIRST_MARGIN,
    WALK_BUDGET_SECONDS,
    Params,
    TimeWindow,
    after_sql,
    box_sql,
    distance_sql,
    fts_match,
    order_by_sql,
    sort_exprs,
    text_filter_sql,
    time_window,
    where_sql,
)


class Reader(Protocol):
    """How a finder reads: the store's connection of this thread."""

    def read(self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[Any]:
        """The rows of ``sql``."""
        ...

    def read_bounded(
        self, sql: str, params: Mapping[str, Any], cpu_seconds: float
    ) -> list[Any] | None:
        """The rows of ``sql``, or None when reading them takes more than ``cpu_seconds``."""
        ...

    def in_transaction(self) -> bool:
        """Whether this thread is inside a write transaction."""
        ...


@dataclass(frozen=True)
class Plan:
    """How a find reads: which table leads the join (``table``, ``geo`` or ``text``)."""

    leader: str
    #: the leader to use when walking the table in sort order runs out of budget
    fallback: str | None = None
    #: how many rows the text matches (capped at COUNT_CAP)
    text_matches: int = 0
    #: how many points lie in the near query's bounding box (capped at COUNT_CAP)
    geo_candidates: int = 0


class SqliteFinder:
    """Finds in one collection: rows of ``doc, sort keys... [, distance]``, one more than the
    limit (to know whether another page follows)."""

    def __init__(self, reader: Reader, schema: CollectionSchema) -> None:
        self._reader = reader
        self.schema = schema
        self._table = f'"{schema.table}"'

    def rows(self, request: FindRequest) -> list[Any]:
        """The rows of the page ``request`` asks for."""
        plan = self.plan(request)
        rows = None
        if plan.fallback is not None:
            if not self._reader.in_transaction():  # never interrupt a read in a transaction
                sql, params = self.statement(request, plan)
                rows = self._reader.read_bounded(sql, params, WALK_BUDGET_SECONDS)
            plan = replace(plan, leader=plan.fallback)
        if rows is None:
            rows = self._nearest_first(request, plan)
        if rows is None:
            rows = self._reader.read(*self.statement(request, plan))
        return rows

    def plan(self, request: FindRequest) -> Plan:
        """Which table leads a find.

        When the smallest candidate set is small, or the sort cannot come from an index
        (distance), that generator leads and its candidates are sorted. Otherwise the table
        leads, walked in sort order, each row checked until the page is full; as that walk is
        slow when few rows match, it gets a budget, and the smallest generator leads when it
        runs out.

        The time window is left out of the count when the text is dense (as if the geo
        index had no time dimension): every candidate would then cost a text check, and
        walking the table in sort order fills the page after a few rows."""
        counts = {}
        sort = request.sort
        sortable = sort[0][0] != DISTANCE and self.schema.sortable(sort[0][0])
        if request.words is not None:
            bind = Params()
            fts = self.schema.text.name  # type: ignore[union-attr]
            match = f'SELECT 1 FROM "{fts}" WHERE "{fts}" MATCH {bind(fts_match(request.words))}'
            counts["text"] = self._count_capped(match, bind, COUNT_CAP)
        near = request.query.near
        if near is not None:
            bind = Params()
            window = time_window(self.schema, request.query.where)
            if sortable and counts.get("text", 0) >= DENSE_TEXT:
                window = None
            where = box_sql(near, bind, window=window)
            box = f'SELECT 1 FROM "{self._geo_table(window)}" AS g WHERE {where}'
            counts["geo"] = self._count_capped(box, bind, COUNT_CAP)
        if not counts:
            return Plan("table")
        leader = min(counts, key=counts.__getitem__)
        plan = Plan(leader, text_matches=counts.get("text", 0), geo_candidates=counts.get("geo", 0))
        if counts[leader] < CANDIDATES_CAP or not sortable:
            return plan
        return replace(plan, leader="table", fallback=leader)

    def _nearest_first(self, request: FindRequest, plan: Plan) -> list[Any] | None:
        """The rows of a query sorted nearest first, looked for in smaller circles first.

        With many candidates, the page usually lies well inside the radius. The circle that
        should hold :data:`NEAREST_FIRST_MARGIN` pages of candidates (from the density in
        the whole circle, beyond the cursor's distance) is searched first, then circles
        holding 4 times more each. The first one that holds a full page gives the answer:
        everything outside it is farther. None when no smaller circle did."""
        query, after = request.query, request.after
        near = query.near
        if near is None or plan.leader != "geo" or request.sort[0] != (DISTANCE, 1):
            return None
        start = after[0] if after is not None and after[0] is not None else 0.0
        wanted = NEAREST_FIRST_MARGIN * (query.limit + 1)
        while 4 * wanted <= plan.geo_candidates:
            # points spread evenly over the box (4 r^2) fall in a circle of radius x with
            # probability pi x^2 / 4 r^2
            ring = near.radius_km * math.sqrt(4 * wanted / (math.pi * plan.geo_candidates))
            if start + ring >= near.radius_km:
                return None
            narrow = replace(query, near=replace(near, radius_km=start + ring))
            rows = self._reader.read(*self.statement(replace(request, query=narrow), plan))
            if len(rows) > query.limit:
                return rows
            wanted *= 4
        return None

    def _count_capped(self, select: str, bind: Params, cap: int) -> int:
        """How many rows ``select`` returns, counting no further than ``cap``."""
        sql = f"SELECT count(*) FROM ({select} LIMIT {cap})"
        return self._reader.read(sql, bind.values)[0][0]

    def statement(self, request: FindRequest, plan: Plan) -> tuple[str, dict[str, Any]]:
        """SELECT doc, sort keys... [, distance] of the page, read as ``plan`` says."""
        query, sort = request.query, request.sort
        bind = Params()
        distance = distance_sql(query.near, bind) if query.near else None
        exprs = sort_exprs(sort, distance)
        window = time_window(self.schema, query.where) if query.near else None
        source, access_conditions = self._access_path(request, window, plan, bind)
        conditions = []
        if query.near is not None:
            conditions.append(box_sql(query.near, bind, window=window))
            conditions.append(f"{distance} <= {bind(query.near.radius_km)}")
        rid = "g.id" if plan.leader == "geo" else "t.rid"
        conditions += where_sql(self.schema, query.where, bind, rid)
        if request.after is not None:
            conditions.append(after_sql(exprs, sort, request.after, bind))
        conditions += access_conditions  # last: the costliest per row
        columns = ["t.doc", *exprs]
        if distance is not None:
            columns.append(distance)
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        sql = (
            f"SELECT {', '.join(columns)} FROM {source}{where} "
            f"ORDER BY {order_by_sql(exprs, sort)} LIMIT {bind(query.limit + 1)}"
        )
        return sql, bind.values

    def _geo_table(self, window: TimeWindow | None) -> str:
        """The R*Tree a near query reads: the one with a time dimension when the query has a
        time window on it."""
        assert self.schema.geo is not None
        if window is not None and self.schema.geo_time is not None:
            return self.schema.geo_time.name
        return self.schema.geo.name

    def _access_path(
        self, request: FindRequest, window: TimeWindow | None, plan: Plan, bind: Params
    ) -> tuple[str, list[str]]:
        """The FROM clause of the plan (CROSS JOIN fixes the join order) and the text
        condition, where it depends on the plan."""
        near, words = request.query.near, request.words
        geo = f'"{self._geo_table(window)}"' if self.schema.geo else ""
        fts = self.schema.text.name if self.schema.text else ""
        match = bind(fts_match(words)) if words is not None else ""
        geo_join = f" CROSS JOIN {geo} AS g ON g.id = t.rid" if near is not None else ""
        if plan.leader == "text":
            source = f'"{fts}" CROSS JOIN {self._table} AS t ON t.rid = "{fts}".rowid{geo_join}'
            return source, [f'"{fts}" MATCH {match}']
        conditions = []
        if words is not None:
            # row by row only when the walk stops early (a led join checks every candidate),
            # and then after the geo test (g.id): it costs more than the geo test, unlike
            # a look-up in the set of matches (t.rid: before the R*Tree is joined)
            dense = plan.leader == "table" and plan.text_matches >= DENSE_TEXT
            rid = "g.id" if dense and near is not None else "t.rid"
            conditions.append(text_filter_sql(fts, match, rid, row_by_row=dense))
        if plan.leader == "geo":
            return f"{geo} AS g CROSS JOIN {self._table} AS t ON t.rid = g.id", conditions
        return f"{self._table} AS t{geo_join}", conditions
