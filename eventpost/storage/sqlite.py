"""The embedded storage adapter: one SQLite file per service.

Concurrency: the file is opened in WAL mode with a busy timeout, one connection per thread
(and per process: a connection inherited through ``fork`` is never used), so readers never
wait for writers and writers queue for the write lock. Every write is one ``BEGIN IMMEDIATE``
transaction (the write lock is taken first, so there are no lock upgrades that could fail);
writes inside :meth:`SqliteStore.transaction` join it (each in its own savepoint, so a write
that fails, e.g. with :class:`DuplicateKey`, leaves nothing behind even when the caller
catches the error and goes on).

Layout: see :mod:`eventpost.storage._sqlite_schema`; the outbox is the table ``outbox``.
"""

# ruff: noqa: S608 - SQL text here holds only names checked by _query.check_spec and
# _query.check_field; every value is a bound parameter.

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eventpost.storage._query import (
    DISTANCE,
    SortSpec,
    check_changes,
    check_limit,
    check_near,
    check_new_document,
    check_where,
    decode_cursor,
    encode_cursor,
    normalize_sort,
    text_words,
)
from eventpost.storage._sqlite_schema import CollectionSchema, ensure_collection
from eventpost.storage._sqlite_sql import (
    CANDIDATES_CAP,
    COUNT_CAP,
    DENSE_TEXT,
    MATH_FUNCTIONS,
    NEAREST_FIRST_MARGIN,
    PROGRESS_STEPS,
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
from eventpost.storage.port import (
    Collection,
    CollectionSpec,
    Document,
    DuplicateKey,
    Near,
    NotFound,
    OutboxEvent,
    Page,
    ParkedEvent,
    Query,
    StorageError,
    Store,
    VersionConflict,
    Where,
)

_OUTBOX_DDL = (
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, lease_owner TEXT, lease_until REAL, "
    "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, parked_at REAL)"
)
#: Columns added to the outbox after its first version (a file written before gets them).
_OUTBOX_ADDED_COLUMNS = {
    "attempts": "attempts INTEGER NOT NULL DEFAULT 0",
    "last_error": "last_error TEXT",
    "parked_at": "parked_at REAL",
}
_PENDING = "SELECT {} FROM outbox WHERE parked_at IS NULL"
# Per connection page cache (KiB) and memory map (bytes): the map is shared with every other
# connection and process through the OS page cache.
_CACHE_KIB = 16 * 1024
_MMAP_BYTES = 256 * 1024 * 1024
_UNIQUE_INDEX = re.compile(r"UNIQUE constraint failed: index '([^']+)'")
_UNIQUE_COLUMNS = re.compile(r"UNIQUE constraint failed: (.+)$")


def _dumps(value: Any) -> str:
    """Compact JSON; NaN/Infinity and non-JSON types are refused (ValueError/TypeError)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _duplicate_key(exc: sqlite3.IntegrityError, schema: CollectionSchema | None) -> DuplicateKey:
    """The DuplicateKey an IntegrityError stands for, naming the fields when it can."""
    message = str(exc)
    match = _UNIQUE_INDEX.search(message)
    if match and schema is not None and match.group(1) in schema.unique_indexes:
        return DuplicateKey(schema.unique_indexes[match.group(1)])
    match = _UNIQUE_COLUMNS.search(message)
    if match:
        table, _, column = match.group(1).partition(".")
        if schema is not None and table == schema.table:
            return DuplicateKey((column,))
        return DuplicateKey((match.group(1),))
    return DuplicateKey()


@contextmanager
def _translated_errors(schema: CollectionSchema | None = None) -> Iterator[None]:
    """Raise the port's errors instead of sqlite3's."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if "UNIQUE" not in str(exc):
            raise StorageError(str(exc)) from exc
        raise _duplicate_key(exc, schema) from exc
    except sqlite3.Error as exc:
        raise StorageError(f"sqlite: {exc}") from exc


class _ThreadState(threading.local):
    """This thread's connection and how deep in a transaction it is."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.pid = 0
        self.generation = -1
        self.depth = 0


class SqliteStore(Store):
    """A service's database in one SQLite file (created if missing).

    ``clock`` gives the time (epoch seconds) outbox leases are measured with; tests inject
    their own. ``synchronous`` is SQLite's durability level: ``FULL`` (default) loses no
    committed write even on power loss, ``NORMAL`` may lose the last ones then (never on a
    process crash) and is faster."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 10.0,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._clock = clock
        self._local = _ThreadState()
        self._lock = threading.Lock()
        self._opened: list[tuple[threading.Thread, int, sqlite3.Connection]] = []
        self._generation = 0
        self._collections: dict[str, SqliteCollection] = {}

    # -- connections and transactions ----------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after fork or close)."""
        state = self._local
        if state.conn is None or state.pid != os.getpid() or state.generation != self._generation:
            state.conn = self._open()
            state.pid, state.generation, state.depth = os.getpid(), self._generation, 0
        return state.conn

    def _open(self) -> sqlite3.Connection:
        with _translated_errors():
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are ours: BEGIN IMMEDIATE / SAVEPOINT
                check_same_thread=False,  # only close() touches it from another thread
                cached_statements=256,
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
            _ensure_math_functions(conn)
            conn.execute(_OUTBOX_DDL)
            _add_outbox_columns(conn)
        with self._lock:
            self._forget_dead_threads()
            self._opened.append((threading.current_thread(), os.getpid(), conn))
        return conn

    def _forget_dead_threads(self) -> None:
        alive = []
        for thread, pid, conn in self._opened:
            if thread.is_alive() or pid != os.getpid():
                alive.append((thread, pid, conn))
            else:
                conn.close()
        self._opened = alive

    @contextmanager
    def _atomic(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection, or a savepoint inside the one
        already open. Rolled back when the block raises."""
        conn = self._connection()
        state = self._local
        if state.depth == 0:
            conn.execute("BEGIN IMMEDIATE")
            state.depth = 1
            try:
                yield conn
            except BaseException:
                state.depth = 0
                if conn.in_transaction:  # some errors roll back by themselves
                    conn.execute("ROLLBACK")
                raise
            state.depth = 0
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return
        savepoint = f"sp{state.depth}"
        conn.execute(f"SAVEPOINT {savepoint}")
        state.depth += 1
        try:
            yield conn
        except BaseException:
            conn.execute(f"ROLLBACK TO {savepoint}")
            raise
        finally:
            state.depth -= 1
            conn.execute(f"RELEASE {savepoint}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite transaction (``BEGIN IMMEDIATE``) for every write in the block, on this
        thread; nested use joins the outer transaction (in a savepoint of its own)."""
        with _translated_errors(), self._atomic():
            yield

    def supports_transactions(self) -> bool:
        """Always: every transaction is one SQLite transaction."""
        return True

    # -- Store ----------------------------------------------------------------------------

    def collection(self, spec: CollectionSpec) -> SqliteCollection:
        cached = self._collections.get(spec.name)
        if cached is not None and cached.spec == spec:
            return cached
        schema = CollectionSchema(spec)
        with _translated_errors(), self._atomic() as conn:
            ensure_collection(conn, schema)
        collection = SqliteCollection(self, schema)
        self._collections[spec.name] = collection
        return collection

    def ping(self) -> None:
        with _translated_errors():
            self._connection().execute("SELECT count(*) FROM sqlite_master").fetchone()

    def close(self) -> None:
        """Close every connection this process opened (threads reopen one on next use)."""
        with self._lock:
            self._generation += 1
            opened, self._opened = self._opened, []
        for _, pid, conn in opened:
            if pid == os.getpid():
                conn.close()

    # -- outbox ---------------------------------------------------------------------------

    @staticmethod
    def outbox_rows(events: Sequence[OutboxEvent]) -> list[tuple[str, str]]:
        """The outbox rows (id, body) of ``events``, checked before anything is written
        (internal)."""
        rows = []
        for event in events:
            event_id = event.get("id")
            if not isinstance(event_id, str) or not event_id:
                raise ValueError("an outbox event needs a non-empty string id")
            rows.append((event_id, _dumps(dict(event))))
        return rows

    @staticmethod
    def write_outbox(conn: sqlite3.Connection, rows: list[tuple[str, str]]) -> None:
        """Insert outbox rows in the transaction of ``conn`` (internal)."""
        conn.executemany("INSERT INTO outbox(id, body) VALUES (?, ?)", rows)

    def outbox_claim(self, owner: str, lease_seconds: float, limit: int = 100) -> list[Document]:
        with _translated_errors(), self._atomic() as conn:
            now = self._clock()
            rows = conn.execute(
                "SELECT seq, body FROM outbox WHERE parked_at IS NULL "
                "AND (lease_until IS NULL OR lease_until <= ?) ORDER BY seq LIMIT ?",
                (now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE seq = ?",
                [(owner, now + lease_seconds, seq) for seq, _ in rows],
            )
        return [json.loads(body) for _, body in rows]

    def outbox_done(self, event_ids: Sequence[str]) -> None:
        with _translated_errors(), self._atomic() as conn:
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in event_ids])

    def outbox_failed(self, event_id: str, reason: str, *, park_after: int) -> int:
        with _translated_errors(), self._atomic() as conn:
            row = conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                "parked_at = CASE WHEN attempts + 1 >= ? THEN ? END "
                "WHERE id = ? AND parked_at IS NULL RETURNING attempts",
                (reason, park_after, self._clock(), event_id),
            ).fetchone()
        return 0 if row is None else row[0]

    def outbox_parked(self) -> list[ParkedEvent]:
        with _translated_errors():
            rows = self._connection().execute(
                "SELECT body, attempts, last_error FROM outbox WHERE parked_at IS NOT NULL "
                "ORDER BY seq"
            )
            return [ParkedEvent(json.loads(body), n, error or "") for body, n, error in rows]

    def outbox_pending(self) -> int:
        with _translated_errors():
            return self._connection().execute(_PENDING.format("count(*)")).fetchone()[0]

    def iter_outbox(self) -> Iterator[Document]:
        with _translated_errors():
            rows = self._connection().execute(_PENDING.format("body") + " ORDER BY seq").fetchall()
        for (body,) in rows:
            yield json.loads(body)


class SqliteCollection(Collection):
    """One collection of a :class:`SqliteStore` (see :class:`Collection` for the contract)."""

    def __init__(self, store: SqliteStore, schema: CollectionSchema) -> None:
        self.spec = schema.spec
        self.schema = schema
        self._store = store
        self._table = f'"{schema.table}"'

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with _translated_errors(self.schema), self._store._atomic() as conn:
            yield conn

    def _read(self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[Any]:
        with _translated_errors(self.schema):
            return self._store._connection().execute(sql, params).fetchall()

    # -- single documents -----------------------------------------------------------------

    def insert(self, doc: Document, *, events: Sequence[OutboxEvent] = ()) -> Document:
        new = check_new_document(doc)
        new["version"] = 1
        text = _dumps(new)
        outbox = self._store.outbox_rows(events)
        with self._writing() as conn:
            conn.execute(
                f"INSERT INTO {self._table}(id, version, doc) VALUES (?, 1, ?)",
                (new["id"], text),
            )
            self._store.write_outbox(conn, outbox)
        return json.loads(text)

    def get(self, doc_id: str) -> Document | None:
        rows = self._read(f"SELECT doc FROM {self._table} WHERE id = ?", (doc_id,))
        return json.loads(rows[0][0]) if rows else None

    def update(
        self,
        doc_id: str,
        changes: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> Document:
        changes = check_changes(changes)
        outbox = self._store.outbox_rows(events)
        with self._writing() as conn:
            row = conn.execute(
                f"SELECT rid, doc FROM {self._table} WHERE id = ?", (doc_id,)
            ).fetchone()
            if row is None:
                raise NotFound(doc_id)
            doc = json.loads(row[1])
            _check_version(doc_id, doc["version"], expected_version)
            new = self._rewrite(conn, row[0], doc, changes)
            self._store.write_outbox(conn, outbox)
        return new

    def delete(
        self,
        doc_id: str,
        *,
        expected_version: int | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        outbox = self._store.outbox_rows(events)
        with self._writing() as conn:
            row = conn.execute(
                f"SELECT rid, version FROM {self._table} WHERE id = ?", (doc_id,)
            ).fetchone()
            if row is None:
                return False
            _check_version(doc_id, row[1], expected_version)
            conn.execute(f"DELETE FROM {self._table} WHERE rid = ?", (row[0],))
            self._store.write_outbox(conn, outbox)
        return True

    def _rewrite(
        self, conn: sqlite3.Connection, rid: int, doc: Document, changes: Mapping[str, Any]
    ) -> Document:
        new = {**doc, **changes, "version": doc["version"] + 1}
        text = _dumps(new)
        conn.execute(
            f"UPDATE {self._table} SET version = ?, doc = ? WHERE rid = ?",
            (new["version"], text, rid),
        )
        return json.loads(text)

    # -- many documents -------------------------------------------------------------------

    def _filter(self, where: Where, bind: Params) -> str:
        check_where(where)
        conditions = where_sql(self.schema, where, bind)
        return " WHERE " + " AND ".join(conditions) if conditions else ""

    def find_one(self, where: Where) -> Document | None:
        bind = Params()
        sql = f"SELECT t.doc FROM {self._table} AS t{self._filter(where, bind)} LIMIT 1"
        rows = self._read(sql, bind.values)
        return json.loads(rows[0][0]) if rows else None

    def count(self, where: Where) -> int:
        bind = Params()
        sql = f"SELECT count(*) FROM {self._table} AS t{self._filter(where, bind)}"
        return self._read(sql, bind.values)[0][0]

    def update_many(
        self,
        where: Where,
        changes: Mapping[str, Any],
        *,
        events: Sequence[OutboxEvent] = (),
    ) -> int:
        changes = check_changes(changes)
        outbox = self._store.outbox_rows(events)
        bind = Params()
        sql = f"SELECT t.rid, t.doc FROM {self._table} AS t{self._filter(where, bind)}"
        with self._writing() as conn:
            rows = conn.execute(sql, bind.values).fetchall()
            for rid, text in rows:
                self._rewrite(conn, rid, json.loads(text), changes)
            if rows:
                self._store.write_outbox(conn, outbox)
        return len(rows)

    def delete_many(self, where: Where, *, events: Sequence[OutboxEvent] = ()) -> int:
        outbox = self._store.outbox_rows(events)
        bind = Params()
        sql = (
            f"DELETE FROM {self._table} WHERE rid IN "
            f"(SELECT t.rid FROM {self._table} AS t{self._filter(where, bind)})"
        )
        with self._writing() as conn:
            deleted = conn.execute(sql, bind.values).rowcount
            if deleted:
                self._store.write_outbox(conn, outbox)
        return deleted

    def claim(
        self,
        where: Where,
        changes: Mapping[str, Any],
        sort: Sequence[tuple[str, int]] = (),
    ) -> Document | None:
        changes = check_changes(changes)
        order = normalize_sort(Query(sort=tuple(sort)))
        bind = Params()
        exprs = sort_exprs(order, None)
        sql = (
            f"SELECT t.rid, t.doc FROM {self._table} AS t{self._filter(where, bind)} "
            f"ORDER BY {order_by_sql(exprs, order)} LIMIT 1"
        )
        with self._writing() as conn:
            row = conn.execute(sql, bind.values).fetchone()
            if row is None:
                return None
            return self._rewrite(conn, row[0], json.loads(row[1]), changes)

    # -- find -----------------------------------------------------------------------------

    def find(self, query: Query) -> Page:
        sort = normalize_sort(query)
        limit = check_limit(query.limit)
        check_where(query.where)
        if query.near is not None:
            check_near(query.near)
            if self.schema.geo is None:
                raise ValueError(f"collection {self.spec.name!r} has no geo_field")
        if query.text is not None and self.schema.text is None:
            raise ValueError(f"collection {self.spec.name!r} has no text_fields")
        after = decode_cursor(query.cursor, sort) if query.cursor else None
        words = text_words(query.text) if query.text is not None else None
        if words == []:
            return Page(items=[], next_cursor=None)
        plan = self._plan(query, words, sort)
        rows = None
        if plan.fallback is not None:
            if self._store._local.depth == 0:  # never interrupt a read inside a transaction
                rows = self._read_bounded(*self._find_statement(query, sort, after, words, plan))
            plan = replace(plan, leader=plan.fallback)
        if rows is None:
            rows = self._nearest_first(query, sort, after, words, plan)
        if rows is None:
            rows = self._read(*self._find_statement(query, sort, after, words, plan))
        items = [self._found(row, query.near is not None) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            next_cursor = encode_cursor(sort, rows[limit - 1][1 : 1 + len(sort)])
        return Page(items=items, next_cursor=next_cursor)

    @staticmethod
    def _found(row: Sequence[Any], near: bool) -> Document:
        doc = json.loads(row[0])
        if near:
            doc["distance_km"] = row[-1]
        return doc

    def _plan(self, query: Query, words: list[str] | None, sort: SortSpec) -> _Plan:
        """Which table leads a find.

        Candidate generators are the R*Tree (near, and the time window when the query has a
        range on the ``geo_time_field``) and the FTS index (text). When the
        smallest candidate set is small, or the sort cannot come from an index (distance),
        that generator leads and its candidates are sorted. Otherwise the table leads, walked
        in sort order, each row checked until the page is full; as that walk is slow when few
        rows match, it gets a budget, and the smallest generator leads when it runs out.

        The time window is left out of the count when the text is dense (as if the geo
        index had no time dimension): every candidate would then cost a text check, and
        walking the table in sort order fills the page after a few rows."""
        counts = {}
        sortable = sort[0][0] != DISTANCE and self.schema.sortable(sort[0][0])
        if words is not None:
            bind = Params()
            fts = self.schema.text.name  # type: ignore[union-attr]
            match = f'SELECT 1 FROM "{fts}" WHERE "{fts}" MATCH {bind(fts_match(words))}'
            counts["text"] = self._count_capped(match, bind, COUNT_CAP)
        near = query.near
        if near is not None:
            bind = Params()
            window = time_window(self.schema, query.where)
            if sortable and counts.get("text", 0) >= DENSE_TEXT:
                window = None
            where = box_sql(near, bind, window=window)
            box = f'SELECT 1 FROM "{self._geo_table(window)}" AS g WHERE {where}'
            counts["geo"] = self._count_capped(box, bind, COUNT_CAP)
        if not counts:
            return _Plan("table")
        leader = min(counts, key=counts.__getitem__)
        plan = _Plan(
            leader, text_matches=counts.get("text", 0), geo_candidates=counts.get("geo", 0)
        )
        if counts[leader] < CANDIDATES_CAP or not sortable:
            return plan
        return replace(plan, leader="table", fallback=leader)

    def _nearest_first(
        self,
        query: Query,
        sort: SortSpec,
        after: list[Any] | None,
        words: list[str] | None,
        plan: _Plan,
    ) -> list[Any] | None:
        """The rows of a query sorted nearest first, looked for in smaller circles first.

        With many candidates, the page usually lies well inside the radius. The circle that
        should hold :data:`NEAREST_FIRST_MARGIN` pages of candidates (from the density in
        the whole circle, beyond the cursor's distance) is searched first, then circles
        holding 4 times more each. The first one that holds a full page gives the answer:
        everything outside it is farther. None when no smaller circle did."""
        near = query.near
        if near is None or plan.leader != "geo" or sort[0] != (DISTANCE, 1):
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
            rows = self._read(*self._find_statement(narrow, sort, after, words, plan))
            if len(rows) > query.limit:
                return rows
            wanted *= 4
        return None

    def _count_capped(self, select: str, bind: Params, cap: int) -> int:
        """How many rows ``select`` returns, counting no further than ``cap``."""
        sql = f"SELECT count(*) FROM ({select} LIMIT {cap})"
        return self._read(sql, bind.values)[0][0]

    def _read_bounded(self, sql: str, params: Mapping[str, Any]) -> list[Any] | None:
        """The rows of ``sql``, or None when it takes more than :data:`WALK_BUDGET_SECONDS`
        of this thread's CPU time (so a busy machine does not cut it short; a progress
        handler interrupts it)."""
        conn = self._store._connection()
        deadline = time.thread_time() + WALK_BUDGET_SECONDS
        interrupted = False

        def over_budget() -> bool:
            nonlocal interrupted
            interrupted = time.thread_time() > deadline
            return interrupted

        conn.set_progress_handler(over_budget, PROGRESS_STEPS)
        try:
            with _translated_errors(self.schema):
                return conn.execute(sql, params).fetchall()
        except StorageError:
            if interrupted:
                return None
            raise
        finally:
            conn.set_progress_handler(None, 0)

    def _find_statement(
        self,
        query: Query,
        sort: SortSpec,
        after: list[Any] | None,
        words: list[str] | None,
        plan: _Plan,
    ) -> tuple[str, dict[str, Any]]:
        """SELECT doc, sort keys... [, distance] of the page (one row more than ``limit``,
        to know whether another page follows)."""
        bind = Params()
        distance = distance_sql(query.near, bind) if query.near else None
        exprs = sort_exprs(sort, distance)
        window = time_window(self.schema, query.where) if query.near else None
        source, access_conditions = self._access_path(query.near, window, words, plan, bind)
        conditions = []
        if query.near is not None:
            conditions.append(box_sql(query.near, bind, window=window))
            conditions.append(f"{distance} <= {bind(query.near.radius_km)}")
        rid = "g.id" if plan.leader == "geo" else "t.rid"
        conditions += where_sql(self.schema, query.where, bind, rid)
        if after is not None:
            conditions.append(after_sql(exprs, sort, after, bind))
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
        self,
        near: Near | None,
        window: TimeWindow | None,
        words: list[str] | None,
        plan: _Plan,
        bind: Params,
    ) -> tuple[str, list[str]]:
        """The FROM clause of the plan (CROSS JOIN fixes the join order) and the text
        condition, where it depends on the plan."""
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


@dataclass(frozen=True)
class _Plan:
    """How a find reads: which table leads the join (``table``, ``geo`` or ``text``)."""

    leader: str
    #: the leader to use when walking the table in sort order runs out of budget
    fallback: str | None = None
    #: how many rows the text matches (capped at COUNT_CAP)
    text_matches: int = 0
    #: how many points lie in the near query's bounding box (capped at COUNT_CAP)
    geo_candidates: int = 0


def _add_outbox_columns(conn: sqlite3.Connection) -> None:
    """Add the outbox columns a file written by an older version lacks."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    for name, definition in _OUTBOX_ADDED_COLUMNS.items():
        if name in present:
            continue
        try:
            conn.execute(f"ALTER TABLE outbox ADD COLUMN {definition}")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # else another process added it first
                raise


def _ensure_math_functions(conn: sqlite3.Connection) -> None:
    """Register the math functions distances need when this SQLite build lacks them."""
    try:
        conn.execute("SELECT sin(0), radians(0)").fetchone()
    except sqlite3.OperationalError:
        for name, fn in MATH_FUNCTIONS.items():
            conn.create_function(name, 1, fn, deterministic=True)


def _check_version(doc_id: str, version: int, expected: int | None) -> None:
    if expected is not None and version != expected:
        raise VersionConflict(f"{doc_id}: version is {version}, not {expected}")
