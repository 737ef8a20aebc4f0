"""The SQLite layout of one collection.

A collection ``name`` is a table ``name(rid INTEGER PRIMARY KEY, id TEXT UNIQUE, version,
doc JSON)`` with expression indexes on ``json_extract(doc, ...)`` (each ending with ``id`` so
that it serves keyset pagination) and up to three side tables that triggers keep in sync
inside the writing transaction, whoever writes:

- ``name__tags(field, value, rid)``: one row per element of each array field (any-of filters);
- ``name__fts``: an FTS5 table over the text fields (rowid = rid);
- ``name__geo``: an R*Tree of the geo points (id = rid) with the exact lat/lng as auxiliary
  columns, so distances need no JSON parsing.

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
from eventpost.storage.port import CollectionSpec

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


class _GeoTable:
    """An R*Tree of points (a box of zero size each) with their exact lat/lng."""

    def __init__(self, table: str, field: str) -> None:
        self.name = f"{table}__geo"
        self.paths = [f"{field}.lat", f"{field}.lng"]

    def create(self) -> list[str]:
        return [
            f'CREATE VIRTUAL TABLE "{self.name}" USING rtree('
            "id, min_lat, max_lat, min_lng, max_lng, +lat, +lng)"
        ]

    def insert(self, row: str, table: str | None = None) -> list[str]:
        lat, lng = (json_expr(p, row) for p in self.paths)
        is_number = " AND ".join(
            f"json_type({row}.doc, '$.{p}') IN ('integer', 'real')" for p in self.paths
        )
        return [
            f'INSERT INTO "{self.name}"(id, min_lat, max_lat, min_lng, max_lng, lat, lng) '
            f"SELECT {row}.rid, {lat}, {lat}, {lng}, {lng}, {lat}, {lng}{_from(table, row)} "
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
        self.side_tables: list[SideTable] = [
            t for t in (self.tags, self.text, self.geo) if t is not None
        ]
        #: unique index name -> its fields (to name the fields of a DuplicateKey)
        self.unique_indexes = {_index_name(self.table, "ux", f): f for f in spec.unique}
        self.indexes = {_index_name(self.table, "ix", f): f for f in spec.indexes}
        self.spec_json = json.dumps(asdict(spec), sort_keys=True)

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
            if name.rsplit("__", 1)[1] in ("tags", "fts", "geo"):
                conn.execute(f'DROP TABLE IF EXISTS "{name}"')
        else:
            conn.execute(f'DROP {kind.upper()} IF EXISTS "{name}"')
