"""The embedded storage adapter: one SQLite file per service.

Concurrency: the file is opened in WAL mode with a busy timeout, one connection per thread
(and per process: a connection inherited through ``fork`` is never used), so readers never
wait for writers and writers queue for the write lock. Every write is one ``BEGIN IMMEDIATE``
transaction (the write lock is taken first, so there are no lock upgrades that could fail);
the writers of one process share one write connection and commit together when they come
together (group commit: one fsync for all of them, see :mod:`eventpost.storage._sqlite_writer`),
each in a savepoint of its own, and none returns before the COMMIT that carries its writes;
writes inside :meth:`SqliteStore.transaction` join it (each in its own savepoint, so a write
that fails, e.g. with :class:`DuplicateKey`, leaves nothing behind even when the caller
catches the error and goes on).

Layout: see :mod:`eventpost.storage._sqlite_schema`; the outbox is the table ``outbox`` (one
row per event: its body, lease, failed publishes and, once parked, when). How a find reads:
see :mod:`eventpost.storage._sqlite_find`.
"""

# ruff: noqa: S608 - SQL text here holds only names checked by _query.check_spec and
# _query.check_field; every value is a bound parameter.

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from eventpost.storage._query import FindRequest, SortSpec
from eventpost.storage._sqlite_find import SqliteFinder
from eventpost.storage._sqlite_schema import CollectionSchema, ensure_collection
from eventpost.storage._sqlite_sql import (
    MATH_FUNCTIONS,
    PROGRESS_STEPS,
    Params,
    order_by_sql,
    sort_exprs,
    where_sql,
)
from eventpost.storage._sqlite_writer import GroupWriter, current_pid
from eventpost.storage.errors import DuplicateKey, NotFound, StorageError, VersionConflict
from eventpost.storage.port import Changes, Collection, Events, Store
from eventpost.storage.values import CollectionSpec, Document, OutboxEvent, Page, ParkedEvent, Where

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


def _loads(text: str) -> Any:
    """A stored document (orjson: reading a page of 100 took the json module three times as
    long); what orjson refuses but the json module wrote (an integer beyond 64 bits) goes
    through the json module."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


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
        self.write_conn: sqlite3.Connection | None = None
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
        self._writers = GroupWriter(self.path, busy_timeout, self._open_writer)

    # -- connections and transactions ----------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after fork or close);
        inside a write transaction, the write connection (so the block reads its writes)."""
        state = self._local
        if state.depth:
            return state.write_conn
        pid = current_pid()
        if state.conn is None or state.pid != pid or state.generation != self._generation:
            state.conn = self._open()
            state.pid, state.generation, state.depth = pid, self._generation, 0
        return state.conn

    def _open(self) -> sqlite3.Connection:
        conn = self._open_writer()
        with self._lock:
            self._forget_dead_threads()
            self._opened.append((threading.current_thread(), current_pid(), conn))
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        """A new connection with the store's settings (the write connection is one too; it
        belongs to no thread)."""
        with _translated_errors():
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are ours: BEGIN IMMEDIATE / SAVEPOINT
                check_same_thread=False,  # only close() touches it from another thread
                cached_statements=256,
            )
            self._enter_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
            _ensure_math_functions(conn)
            conn.execute(_OUTBOX_DDL)
            _add_outbox_columns(conn)
        return conn

    def _enter_wal(self, conn: sqlite3.Connection) -> None:
        """Put the file in WAL mode, waiting out other processes doing the same.

        Turning a new file to WAL takes an exclusive lock, and SQLite answers ``database is
        locked`` at once, without its busy handler, to a connection that meets another one
        doing it (two instances of a service answering their first requests on a new file),
        so the wait for up to the busy timeout is ours."""
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.001
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _forget_dead_threads(self) -> None:
        alive = []
        for thread, pid, conn in self._opened:
            if thread.is_alive() or pid != current_pid():
                alive.append((thread, pid, conn))
            else:
                conn.close()
        self._opened = alive

    @contextmanager
    def _atomic(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (one writer of a group commit, on the write connection), or a
        savepoint inside the one this thread already has open. Rolled back when the block
        raises; returns once its writes are committed."""
        state = self._local
        if state.depth == 0:
            with self._writers.member() as conn:
                state.write_conn, state.depth = conn, 1
                try:
                    yield conn
                finally:
                    state.write_conn, state.depth = None, 0
            return
        conn = state.write_conn
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

    def in_transaction(self) -> bool:
        """Whether this thread is inside a write transaction (internal)."""
        return self._local.depth > 0

    def read(self, sql: str, params: Mapping[str, Any] | Sequence[Any] = ()) -> list[Any]:
        """The rows of ``sql`` on this thread's connection (internal)."""
        with _translated_errors():
            return self._connection().execute(sql, params).fetchall()

    def read_bounded(
        self, sql: str, params: Mapping[str, Any], cpu_seconds: float
    ) -> list[Any] | None:
        """The rows of ``sql``, or None when it takes more than ``cpu_seconds`` of this
        thread's CPU time (so a busy machine does not cut it short; a progress handler
        interrupts it) (internal)."""
        conn = self._connection()
        deadline = time.thread_time() + cpu_seconds
        interrupted = False

        def over_budget() -> bool:
            nonlocal interrupted
            interrupted = time.thread_time() > deadline
            return interrupted

        conn.set_progress_handler(over_budget, PROGRESS_STEPS)
        try:
            with _translated_errors():
                return conn.execute(sql, params).fetchall()
        except StorageError:
            if interrupted:
                return None
            raise
        finally:
            conn.set_progress_handler(None, 0)

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
            if pid == current_pid():
                conn.close()
        self._writers.close()

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
        return [_loads(body) for _, body in rows]

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
            return [ParkedEvent(_loads(body), n, error or "") for body, n, error in rows]

    def outbox_pending(self) -> int:
        with _translated_errors():
            return self._connection().execute(_PENDING.format("count(*)")).fetchone()[0]

    def iter_outbox(self) -> Iterator[Document]:
        with _translated_errors():
            rows = self._connection().execute(_PENDING.format("body") + " ORDER BY seq").fetchall()
        for (body,) in rows:
            yield _loads(body)


class SqliteCollection(Collection):
    """One collection of a :class:`SqliteStore` (see :class:`Collection` for the contract;
    finds are planned by :class:`eventpost.storage._sqlite_find.SqliteFinder`)."""

    def __init__(self, store: SqliteStore, schema: CollectionSchema) -> None:
        self.spec = schema.spec
        self.schema = schema
        self._store = store
        self._table = f'"{schema.table}"'
        self._finder = SqliteFinder(store, schema)

    @contextmanager
    def _writing(self, events: Events) -> Iterator[_Write]:
        """A write transaction (or savepoint) whose outbox rows, checked before anything is
        written, go in with the change when :meth:`_Write.changed` is called."""
        outbox = self._store.outbox_rows(events)
        with _translated_errors(self.schema), self._store._atomic() as conn:
            yield _Write(conn, outbox)

    # -- single documents -----------------------------------------------------------------

    def _insert(self, doc: Document, events: Events) -> Document:
        doc["version"] = 1
        text = _dumps(doc)
        with self._writing(events) as write:
            write.conn.execute(
                f"INSERT INTO {self._table}(id, version, doc) VALUES (?, 1, ?)", (doc["id"], text)
            )
            write.changed()
        return _loads(text)

    def get(self, doc_id: str) -> Document | None:
        rows = self._store.read(f"SELECT doc FROM {self._table} WHERE id = ?", (doc_id,))
        return _loads(rows[0][0]) if rows else None

    def version_of(self, doc_id: str) -> int | None:
        rows = self._store.read(f"SELECT version FROM {self._table} WHERE id = ?", (doc_id,))
        return rows[0][0] if rows else None

    def _update(
        self, doc_id: str, changes: Changes, expected_version: int | None, events: Events
    ) -> Document:
        with self._writing(events) as write:
            row = write.conn.execute(
                f"SELECT rid, doc FROM {self._table} WHERE id = ?", (doc_id,)
            ).fetchone()
            if row is None:
                raise NotFound(doc_id)
            doc = _loads(row[1])
            _check_version(doc_id, doc["version"], expected_version)
            new = self._rewrite(write.conn, row[0], doc, changes)
            write.changed()
        return new

    def _delete(self, doc_id: str, expected_version: int | None, events: Events) -> bool:
        with self._writing(events) as write:
            row = write.conn.execute(
                f"SELECT rid, version FROM {self._table} WHERE id = ?", (doc_id,)
            ).fetchone()
            if row is None:
                return False
            _check_version(doc_id, row[1], expected_version)
            write.conn.execute(f"DELETE FROM {self._table} WHERE rid = ?", (row[0],))
            write.changed()
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
        return _loads(text)

    # -- many documents -------------------------------------------------------------------

    def _select(self, columns: str, where: Where, bind: Params) -> str:
        """SELECT ``columns`` of the rows (aliased ``t``) matching ``where``."""
        conditions = where_sql(self.schema, where, bind)
        filtered = " WHERE " + " AND ".join(conditions) if conditions else ""
        return f"SELECT {columns} FROM {self._table} AS t{filtered}"

    def _find_one(self, where: Where) -> Document | None:
        bind = Params()
        rows = self._store.read(self._select("t.doc", where, bind) + " LIMIT 1", bind.values)
        return _loads(rows[0][0]) if rows else None

    def _count(self, where: Where) -> int:
        bind = Params()
        return self._store.read(self._select("count(*)", where, bind), bind.values)[0][0]

    def _update_many(self, where: Where, changes: Changes, events: Events) -> int:
        bind = Params()
        sql = self._select("t.rid, t.doc", where, bind)
        with self._writing(events) as write:
            rows = write.conn.execute(sql, bind.values).fetchall()
            for rid, text in rows:
                self._rewrite(write.conn, rid, _loads(text), changes)
            if rows:
                write.changed()
        return len(rows)

    def _delete_many(self, where: Where, events: Events) -> int:
        bind = Params()
        sql = f"DELETE FROM {self._table} WHERE rid IN ({self._select('t.rid', where, bind)})"
        with self._writing(events) as write:
            deleted = write.conn.execute(sql, bind.values).rowcount
            if deleted:
                write.changed()
        return deleted

    def _claim(self, where: Where, changes: Changes, sort: SortSpec) -> Document | None:
        bind = Params()
        order = order_by_sql(sort_exprs(sort, None), sort)
        sql = f"{self._select('t.rid, t.doc', where, bind)} ORDER BY {order} LIMIT 1"
        with self._writing(()) as write:
            row = write.conn.execute(sql, bind.values).fetchone()
            if row is None:
                return None
            return self._rewrite(write.conn, row[0], _loads(row[1]), changes)

    # -- find -----------------------------------------------------------------------------

    def _find(self, request: FindRequest) -> Page:
        near = request.query.near is not None
        keys = len(request.sort)

        def document(row: Sequence[Any]) -> Document:
            doc = _loads(row[0])
            if near:
                doc["distance_km"] = row[-1]
            return doc

        return request.page(self._finder.rows(request), document, lambda row: row[1 : 1 + keys])


@dataclass
class _Write:
    """One write of a collection: its connection, and the outbox rows written with it."""

    conn: sqlite3.Connection
    outbox: list[tuple[str, str]]

    def changed(self) -> None:
        """The write changed something: its events go into the outbox, in its transaction."""
        SqliteStore.write_outbox(self.conn, self.outbox)


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
