"""Group commit in the SQLite adapter: concurrent writers share one COMMIT, and none of them
returns before the COMMIT that carries its writes succeeded (real SQLite files)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from eventpost.storage import CollectionSpec, StorageError
from eventpost.storage._sqlite_writer import GroupWriter
from eventpost.storage.sqlite import SqliteStore

THINGS = CollectionSpec("things")


def committed_ids(path: Path) -> set[str]:
    """The ids another connection (another process, say) sees committed."""
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM things")}


def test_concurrent_writers_all_committed_and_visible_when_they_return(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    things = store.collection(THINGS)
    unseen: list[str] = []

    def writer(t: int) -> None:
        for i in range(20):
            key = f"{t}-{i}"
            things.insert({"id": key, "n": i}, events=[{"id": f"e-{key}", "type": "x"}])
            # Acknowledged means committed: a separate connection sees it at once.
            if key not in committed_ids(path):
                unseen.append(key)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert unseen == []
    assert len(committed_ids(path)) == 160
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 160
    store.close()


def test_a_failing_writer_undoes_only_its_own_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    things = store.collection(THINGS)
    things.insert({"id": "taken"})
    errors: list[BaseException] = []

    def good(t: int) -> None:
        for i in range(10):
            things.insert({"id": f"good-{t}-{i}"})

    def bad() -> None:
        for i in range(10):
            try:
                with store.transaction():
                    things.insert({"id": f"bad-{i}"})
                    things.insert({"id": "taken"})  # DuplicateKey: the block fails
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=good, args=(t,)) for t in range(4)]
    threads.append(threading.Thread(target=bad))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = committed_ids(tmp_path / "s.sqlite3")
    assert len(errors) == 10
    assert not any(key.startswith("bad-") for key in ids)
    assert sum(key.startswith("good-") for key in ids) == 40
    store.close()


class _FailingCommit(sqlite3.Connection):
    """A connection whose COMMIT fails (a full disk, say)."""

    def execute(self, sql: str, *args):  # type: ignore[override]
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


def _two_writers_in_one_group(writer: GroupWriter, first_waits_for: threading.Event):
    """Run two writers so that the second joins the first one's group; their outcomes."""
    outcomes: dict[str, object] = {}

    def first() -> None:
        try:
            with writer.member() as conn:
                conn.execute("INSERT INTO t VALUES ('first')")
                first_waits_for.wait(5)
                # Hand over only once the second writer waits for its turn.
                while writer._waiting == 0:
                    threading.Event().wait(0.001)
            outcomes["first"] = "ok"
        except StorageError as exc:
            outcomes["first"] = exc

    def second() -> None:
        first_waits_for.set()
        try:
            with writer.member() as conn:
                conn.execute("INSERT INTO t VALUES ('second')")
            outcomes["second"] = "ok"
        except StorageError as exc:
            outcomes["second"] = exc

    one = threading.Thread(target=first)
    one.start()
    while not writer._busy:
        threading.Event().wait(0.001)
    two = threading.Thread(target=second)
    two.start()
    one.join(10)
    two.join(10)
    return outcomes


def _connect(path: Path, factory=sqlite3.Connection):
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=factory)
        conn.execute("PRAGMA journal_mode = WAL")
        return conn

    return connect


def _table(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (v TEXT)")


def test_two_writers_share_one_commit(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    _table(path)
    commits = []

    class Counting(sqlite3.Connection):
        def execute(self, sql: str, *args):  # type: ignore[override]
            if sql == "COMMIT":
                commits.append(sql)
            return super().execute(sql, *args)

    writer = GroupWriter(path, 10.0, _connect(path, Counting))
    outcomes = _two_writers_in_one_group(writer, threading.Event())
    assert outcomes == {"first": "ok", "second": "ok"}
    assert len(commits) == 1
    with sqlite3.connect(path) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT v FROM t")) == ["first", "second"]
    writer.close()


def test_a_failed_commit_fails_every_writer_of_the_group(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    _table(path)
    writer = GroupWriter(path, 10.0, _connect(path, _FailingCommit))
    outcomes = _two_writers_in_one_group(writer, threading.Event())
    assert isinstance(outcomes["first"], StorageError)
    assert isinstance(outcomes["second"], StorageError)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    writer.close()


def test_a_writer_waits_at_most_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite3"
    _table(path)
    other = GroupWriter(path, 10.0, _connect(path))  # another process's writer, in effect
    writer = GroupWriter(path, 0.05, _connect(path))
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with other.member() as conn:
            conn.execute("INSERT INTO t VALUES ('held')")
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    with pytest.raises(StorageError, match="locked"), writer.member() as conn:
        conn.execute("INSERT INTO t VALUES ('late')")
    release.set()
    thread.join(5)
    with writer.member() as conn:  # the turn comes once the other writer is done
        conn.execute("INSERT INTO t VALUES ('later')")
    with sqlite3.connect(path) as conn:
        assert sorted(r[0] for r in conn.execute("SELECT v FROM t")) == ["held", "later"]
    other.close()
    writer.close()
