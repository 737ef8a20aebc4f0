"""The SQLite layout of one collection.

A collection ``name`` is a table ``name(rid INTEGER PRIMARY KEY, id TEXT UNIQUE, version,
doc JSON)`` with expression indexes on ``json_extract(doc, ...)`` (each ending with ``id`` so
that it serves keyset pagination) and up to four side tables that triggers keep in sync
inside the writing transaction, whoever writes:

- ``name__tags(field, value, rid)``: one row per element of each array field (any-of filters);
- ``name__fts``: an FTS5 table over the text fields (rowid = rid);
- ``name__geo``: an R*Tree of the geo points (id = rid) with the exact lat/lng as auxiliary
  columns, so distances need no JSON parsing;
- ``name__geot``: with a ``geo_time_field``, the same with time as a third dimension.

Every name put into SQL here was checked by :func:`eventpost.storage._query.check_spec`.
"""

# ruff: noqa: S608 - SQL text here holds only names checked by _query.check_spec and
# _query.check_field; every value is a bound parameter.

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict

from eventpost.storage._query import check_spec
from eventpost.storage.values import CollectionSpec

META_TABLE = "_collections"
FTS_TOKENIZER = "unicode61 remove_diacritics 2"


def json_expr(path: str, row: str | None = "t") -> str:
    """The SQL expression of the field at ``path`` of the row aliased ``row`` (None: the
    unqualified form index definitions use)."""
    prefix = f"{row}." if row else ""
    if path in ("id", "version"):
        return f"{prefix}{path}"
    return f"json_extract({prefix}doc, '$.{path}')"


def _from(table: str | None, row: str) -> str:
    """The FROM clause of a side-table fill: none in a trigger (``row`` is new/old), the
    collection's table when backfilling."""
    return f' FROM "{table}" AS {row}' if table else ""


def _index_name(table: str, kind: str, fields: tuple[str, ...]) -> str:
    readable = "_".join(f.replace(".", "_") for f in fields)
    digest = hashlib.sha1(",".join(fields).encode()).hexdigest()[:6]  # noqa: S324 - a name
    return f"{table}__{kind}_{readable}_{digest}"


def _changed(paths: list[str]) -> str:
    """A trigger WHEN clause: true when an update changed any of ``paths``."""
    return " OR ".join(f"{json_expr(p, 'old')} IS NOT {json_expr(p, 'new')}" for p in paths)


class _TagsTable:
    """Array elements, one row each, for any-of filters without parsing JSON."""

    def __init__(self, table: str, fields: tuple[str, ...]) -> None:
        self.name = f"{table}__tags"
        self.paths = list(fields)

    def create(self) -> list[str]:
        return [
            f'CREATE TABLE "{self.name}" (field TEXT NOT NULL, value NOT NULL, '
            "rid INTEGER NOT NULL, PRIMARY KEY (field, value, rid)) WITHOUT ROWID",
            f'CREATE INDEX "{self.name}_rid" ON "{self.name}"(rid)',
        ]

    def insert(self, row: str, table: str | None = None) -> list[str]:
        source = f'"{table}" AS {row}, ' if table else ""
        return [
            f'INSERT INTO "{self.name}"(field, value, rid) '
            f"SELECT DISTINCT '{path}', j.value, {row}.rid "
            f"FROM {source}json_each({row}.doc, '$.{path}') AS j WHERE j.value IS NOT NULL"
            for path in self.paths
        ]

    def delete(self, row: str) -> list[str]:
        return [f'DELETE FROM "{self.name}" WHERE rid = {row}.rid']


class _TextTable:
    """FTS5 over the text fields; rowid = the document's rid."""

    def __init__(self, table: str, fields: tuple[str, ...]) -> None:
        self.name = f"{table}__fts"
        self.paths = list(fields)
        self.columns = ", ".join(f'"{p.replace(".", "_")}"' for p in self.paths)

    def create(self) -> list[str]:
        return [
            f'CREATE VIRTUAL TABLE "{self.name}" USING fts5({self.columns}, '
            f"tokenize = '{FTS_TOKENIZER}')"
        ]

    def insert(self, row: str, table: str | None = None) -> list[str]:
        values = ", ".join(json_expr(p, row) for p in self.paths)
        return [
            f'INSERT INTO "{self.name}"(rowid, {self.columns}) '
            f"SELECT {row}.rid, {values}{_from(table, row)}"
        ]

    def delete(self, row: str) -> list[str]:
        return [f'DELETE FROM "{self.name}" WHERE rowid = {row}.rid']


#: The time dimension of an R*Tree entry whose time field holds no canonical time: every time
#: (R*Tree coordinates are 32-bit floats; this is well inside their range).
UNBOUNDED_TIME = 1e38
#: A canonical time string (eventpost.timeutil.format_time), as a GLOB pattern.
_TIME_GLOB = "-".join(["[0-9]" * 4, "[0-9]" * 2, "[0-9]" * 2]) + "T" + ":".join(["[0-9]" * 2] * 3)
_TIME_GLOB += "." + "[0-9]" * 6 + "Z"


def time_seconds_sql(path: str, row: str) -> str:
    """Whole epoch seconds of the canonical time string at ``path`` (as
    :func:`eventpost.storage._query.time_seconds`), NULL when it holds none: not text, not
    of the canonical shape, or not a real date and time (SQLite would read 2026-02-30 as
    March 2nd; the round trip through its normalising date functions catches that)."""
    value = json_expr(path, row)
    whole = f"substr({value}, 1, 19)"
    valid = (
        f"json_type({row}.doc, '$.{path}') = 'text' AND {value} GLOB '{_TIME_GLOB}' "
        f"AND strftime('%Y-%m-%dT%H:%M:%S', {whole}, '+0 seconds') = {whole}"
    )
    return f"(CASE WHEN {valid} THEN CAST(strftime('%s', {whole}) AS INTEGER) END)"


class _GeoTable:
    """An R*Tree of points (a box of zero size each) with their exact lat/lng.

    With a time field, a third dimension holds its time in epoch seconds (a document without
    a canonical time there spans every time, so the tree never hides it: the filter on the
    field itself decides). That tree is kept beside the flat one, not instead of it: its
    nodes group points close in place and time, so a query over all times would visit
    several times more of them (measured: 5x slower near queries without a time range)."""

    def __init__(self, table: str, field: str, time_field: str | None = None) -> None:
        self.name = f"{table}__geot" if time_field else f"{table}__geo"
        self.paths = [f"{field}.lat", f"{field}.lng"]
        self.time_field = time_field
        if time_field is not None:
            self.paths.append(time_field)

    def create(self) -> list[str]:
        time = " min_t, max_t," if self.time_field else ""
        return [
            f'CREATE VIRTUAL TABLE "{self.name}" USING rtree('
            f"id, min_lat, max_lat, min_lng, max_lng,{time} +lat, +lng)"
        ]

    def insert(self, row: str, table: str | None = None) -> list[str]:
        lat, lng = (json_expr(p, row) for p in self.paths[:2])
        is_number = " AND ".join(
            f"json_type({row}.doc, '$.{p}') IN ('integer', 'real')" for p in self.paths[:2]
        )
        columns, values = "", ""
        if self.time_field is not None:
            seconds = time_seconds_sql(self.time_field, row)
            columns = ", min_t, max_t"
            values = (
                f", coalesce({seconds}, -{UNBOUNDED_TIME!r}), "
                f"coalesce({seconds}, {UNBOUNDED_TIME!r})"
            )
        return [
            f'INSERT INTO "{self.name}"(id, min_lat, max_lat, min_lng, max_lng{columns}, lat, lng) '
            f"SELECT {row}.rid, {lat}, {lat}, {lng}, {lng}{values}, {lat}, {lng}"
            f"{_from(table, row)} "
            f"WHERE {is_number} AND {lat} BETWEEN -90 AND 90 AND {lng} BETWEEN -180 AND 180"
        ]

    def delete(self, row: str) -> list[str]:
        return [f'DELETE FROM "{self.name}" WHERE id = {row}.rid']


SideTable = _TagsTable | _TextTable | _GeoTable


class CollectionSchema:
    """Names and DDL of one collection's tables, indexes and triggers."""

    def __init__(self, spec: CollectionSpec) -> None:
        self.spec = check_spec(spec)
        self.table = spec.name
        self.tags = _TagsTable(self.table, spec.array_fields) if spec.array_fields else None
        self.text = _TextTable(self.table, spec.text_fields) if spec.text_fields else None
        self.geo = _GeoTable(self.table, spec.geo_field) if spec.geo_field else None
        self.geo_time = (
            _GeoTable(self.table, spec.geo_field, spec.geo_time_field)
            if spec.geo_field and spec.geo_time_field
            else None
        )
        self.side_tables: list[SideTable] = [
            t for t in (self.tags, self.text, self.geo, self.geo_time) if t is not None
        ]
        #: unique index name -> its fields (to name the fields of a DuplicateKey)
        self.unique_indexes = {_index_name(self.table, "ux", f): f for f in spec.unique}
        self.indexes = {_index_name(self.table, "ix", f): f for f in spec.indexes}
        stored = asdict(spec)
        if stored["geo_time_field"] is None:
            # as written before the field existed: files of unchanged specs are not rebuilt
            del stored["geo_time_field"]
        self.spec_json = json.dumps(stored, sort_keys=True)

    def sortable(self, path: str) -> bool:
        """Whether an index starts with ``path`` (so sorting by it needs no sort step; the
        partial unique indexes cannot serve a sort)."""
        return path == "id" or path in (fields[0] for fields in self.spec.indexes)

    # -- DDL ------------------------------------------------------------------------------

    def create_statements(self) -> list[str]:
        """Every statement that creates this collection (the document table only if it is
        missing; :func:`ensure_collection` dropped the derived objects before)."""
        statements = [
            f'CREATE TABLE IF NOT EXISTS "{self.table}" (rid INTEGER PRIMARY KEY, '
            "id TEXT NOT NULL UNIQUE, version INTEGER NOT NULL, doc TEXT NOT NULL)"
        ]
        for name, fields in self.unique_indexes.items():
            columns = ", ".join(json_expr(f, None) for f in fields)
            not_null = " AND ".join(f"{json_expr(f, None)} IS NOT NULL" for f in fields)
            statements.append(
                f'CREATE UNIQUE INDEX "{name}" ON "{self.table}"({columns}) WHERE {not_null}'
            )
        for name, fields in self.indexes.items():
            columns = ", ".join(json_expr(f, None) for f in fields)
            statements.append(f'CREATE INDEX "{name}" ON "{self.table}"({columns}, id)')
        for side in self.side_tables:
            statements += side.create()
        statements += self._triggers()
        return statements

    def _triggers(self) -> list[str]:
        if not self.side_tables:
            return []
        on_insert = [s for side in self.side_tables for s in side.insert("new")]
        on_delete = [s for side in self.side_tables for s in side.delete("old")]
        triggers = [
            self._trigger("ai", "AFTER INSERT", on_insert),
            self._trigger("ad", "AFTER DELETE", on_delete),
        ]
        for side in self.side_tables:
            kind = side.name.rsplit("__", 1)[1]
            triggers.append(
                self._trigger(
                    f"au_{kind}",
                    "AFTER UPDATE OF doc",
                    [*side.delete("old"), *side.insert("new")],
                    when=_changed(side.paths),
                )
            )
        return triggers

    def _trigger(self, suffix: str, event: str, body: list[str], when: str = "") -> str:
        condition = f" WHEN {when}" if when else ""
        statements = "".join(f"{s}; " for s in body)
        return (
            f'CREATE TRIGGER "{self.table}__{suffix}" {event} ON "{self.table}"'
            f"{condition} BEGIN {statements}END"
        )

    def backfill_statements(self) -> list[str]:
        """Fill the side tables from the rows already in the table."""
        return [s for side in self.side_tables for s in side.insert("r", self.table)]


def ensure_collection(conn: sqlite3.Connection, schema: CollectionSchema) -> None:
    """Create or update the collection's tables, indexes and triggers to match its spec.

    Runs inside the caller's write transaction. When the spec stored by a previous run
    differs, the derived objects (indexes, side tables, triggers) are rebuilt from the rows."""
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{META_TABLE}" (name TEXT PRIMARY KEY, spec TEXT)')
    row = conn.execute(
        f'SELECT spec FROM "{META_TABLE}" WHERE name = ?', (schema.table,)
    ).fetchone()
    if row is not None and row[0] == schema.spec_json:
        return
    _drop_derived(conn, schema.table)
    for statement in schema.create_statements():
        conn.execute(statement)
    for statement in schema.backfill_statements():
        conn.execute(statement)
    conn.execute(
        f'INSERT INTO "{META_TABLE}"(name, spec) VALUES (?, ?) '
        "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec",
        (schema.table, schema.spec_json),
    )


def _drop_derived(conn: sqlite3.Connection, table: str) -> None:
    """Drop the triggers, indexes and side tables of ``table`` (never the documents)."""
    prefix = f"{table}__"
    rows = conn.execute(
        "SELECT type, name FROM sqlite_master WHERE substr(name, 1, ?) = ? "
        "AND type IN ('trigger', 'index', 'table')",
        (len(prefix), prefix),
    ).fetchall()
    kinds = {"trigger": 0, "index": 1, "table": 2}
    for kind, name in sorted(rows, key=lambda r: kinds[r[0]]):
        if kind == "table":
            # only the side tables themselves; a virtual table drops its shadow tables
            if name.rsplit("__", 1)[1] in ("tags", "fts", "geo", "geot"):
                conn.execute(f'DROP TABLE IF EXISTS "{name}"')
        else:
            conn.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
