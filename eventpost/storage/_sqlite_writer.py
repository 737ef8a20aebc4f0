"""Group commit for the SQLite adapter: the writers of one process share one write connection
and, when they come together, one ``COMMIT``.

With ``synchronous=FULL`` every ``COMMIT`` waits for an fsync of the WAL (about 5 ms on this
kind of disk), and SQLite lets one writer in at a time, so ten concurrent writers each paying
their own fsync queue for ~50 ms; SQLite's busy handler made it worse, polling with sleeps of
up to 100 ms (p99 of ``POST /v1/events`` was ~1 s). Here a writer:

1. waits its turn (a condition: the threads of this process; an ``flock`` of
   ``<database>-writers.lock`` is held while a transaction is open, so other processes wait
   for it in the kernel-backed queue rather than in SQLite's sleeps);
2. runs its block in a ``SAVEPOINT`` of the one open transaction (``BEGIN IMMEDIATE`` when
   none is open): a block that raises undoes only its own writes;
3. when nobody else is waiting (or the group is full), commits the transaction, its own writes
   and those of every writer before it in the group, with one fsync; otherwise hands the
   connection to the next writer and waits for the commit that carries its writes.

No writer returns before the ``COMMIT`` that made its writes durable has succeeded, and a
failed ``COMMIT`` (or a transaction SQLite rolled back by itself) raises in every writer of
the group, so nothing is acknowledged that a crash (or power loss) could still take away.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from eventpost.storage.errors import StorageError

#: Writers one COMMIT may carry at most (so one writer never waits for an endless group).
MAX_GROUP = 64
_MEMBER = "member"

# This process's id, kept current across fork: ``os.getpid()`` is a system call, and every
# store call checks it (a connection inherited through fork is never used).
_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def current_pid() -> int:
    """This process's id (cached, kept current across fork)."""
    return _PID[0]


class _Group:
    """The writers whose writes one COMMIT will carry."""

    def __init__(self) -> None:
        self.size = 0
        self.done = threading.Event()
        self.error: BaseException | None = None


def _locked() -> StorageError:
    return StorageError("sqlite: database is locked (timed out waiting for the writers' queue)")


class GroupWriter:
    """The write side of one SQLite file in this process (see the module docstring).

    ``connect()`` opens a connection (the store's own settings); the write connection is
    opened on first use and again after a fork or :meth:`close`."""

    def __init__(self, path: Path, timeout: float, connect: Callable[[], sqlite3.Connection]):
        self._lock_path = path.with_name(path.name + "-writers.lock")
        self._timeout = timeout
        self._connect = connect
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._waiting = 0
        self._group: _Group | None = None
        self._conn: sqlite3.Connection | None = None
        self._fd: int | None = None
        self._pid = 0

    @contextmanager
    def member(self) -> Iterator[sqlite3.Connection]:
        """Run the block as one writer of a group (see the module docstring); returns only
        once its writes are committed, raises when they could not be."""
        deadline = time.monotonic() + self._timeout
        self._take_turn(deadline)
        try:
            conn, group = self._join(deadline)
        except BaseException:
            self._hand_over(None)
            raise
        try:
            conn.execute(f"SAVEPOINT {_MEMBER}")
            yield conn
        except BaseException:
            self._undo_member(conn, group)
            raise
        try:
            conn.execute(f"RELEASE {_MEMBER}")
        except BaseException:
            self._undo_member(conn, group)
            raise
        group.size += 1
        self._hand_over(group)
        group.done.wait()
        if group.error is not None:
            raise StorageError(f"sqlite: the commit failed: {group.error}") from group.error

    def close(self) -> None:
        """Close this process's write connection and lock file (reopened on next use)."""
        with self._cond:
            conn, self._conn = self._conn, None
            fd, self._fd = self._fd, None
            mine = self._pid == _PID[0]
        if mine and conn is not None:
            conn.close()
        if mine and fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- internals ---------------------------------------------------------------------

    def _take_turn(self, deadline: float) -> None:
        with self._cond:
            self._waiting += 1
            try:
                while self._busy:
                    left = deadline - time.monotonic()
                    if (left <= 0 or not self._cond.wait(left)) and self._busy:
                        raise _locked()
                self._busy = True
            finally:
                self._waiting -= 1

    def _join(self, deadline: float) -> tuple[sqlite3.Connection, _Group]:
        """The write connection with a transaction open (begun for a new group)."""
        if self._pid != _PID[0]:
            # Forked: the parent's connection, lock file and group are not this process's.
            self._conn, self._fd, self._group, self._pid = None, None, None, _PID[0]
        if self._conn is None:
            self._conn = self._connect()
        if self._group is None:
            self._flock(deadline)
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except BaseException:
                self._unflock()
                raise
            self._group = _Group()
        return self._conn, self._group

    def _undo_member(self, conn: sqlite3.Connection, group: _Group) -> None:
        """Undo a failed writer's own writes; the group goes on without them."""
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"ROLLBACK TO {_MEMBER}")
                conn.execute(f"RELEASE {_MEMBER}")
        if not conn.in_transaction and group.size:
            # SQLite rolled the whole transaction back by itself: the group's writes are gone.
            self._finish(group, StorageError("sqlite: the transaction was rolled back"))
        self._hand_over(group)

    def _hand_over(self, group: _Group | None) -> None:
        """Commit the group when nobody else waits to join it (or it is full), then let the
        next writer in."""
        if group is not None and self._group is group:
            conn = self._conn
            if conn is None or not conn.in_transaction:
                self._finish(group, None if group.size == 0 else StorageError("rolled back"))
            elif self._waiting == 0 or group.size >= MAX_GROUP:
                self._commit(conn, group)
        with self._cond:
            self._busy = False
            self._cond.notify()

    def _commit(self, conn: sqlite3.Connection, group: _Group) -> None:
        error: BaseException | None = None
        try:
            if group.size:
                conn.execute("COMMIT")
            else:
                conn.execute("ROLLBACK")
        except BaseException as exc:
            error = exc
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        self._finish(group, error)

    def _finish(self, group: _Group, error: BaseException | None) -> None:
        if self._group is group:
            self._group = None
            self._unflock()
        group.error = error
        group.done.set()

    def _flock(self, deadline: float) -> None:
        # Non-blocking tries with short naps: a blocking flock could not honour the timeout.
        if self._fd is None:
            try:
                self._fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                return  # no lock file (read-only directory): SQLite's busy handler only
        nap = 0.0002
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _locked() from None
                time.sleep(nap)
                nap = min(nap * 2, 0.002)

    def _unflock(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
