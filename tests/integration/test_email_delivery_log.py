"""The delivery log on the SQLite store: states, the race between two workers, the lease a
sending worker holds, pruning."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from email_sender.delivery_log import FAILED, SENDING, SENT, DeliveryInProgress, DeliveryLog
from eventpost.storage.sqlite import SqliteStore

T0 = datetime(2026, 12, 1, 19, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def stores(tmp_path):
    """Two stores on one file, as two worker processes would have."""
    a = SqliteStore(tmp_path / "email_sender.sqlite3")
    b = SqliteStore(tmp_path / "email_sender.sqlite3")
    yield a, b
    a.close()
    b.close()


def test_a_delivery_goes_from_sending_to_sent(stores):
    log = DeliveryLog(stores[0], clock=Clock())
    assert log.get("k") is None
    log.begin("k", "<m1@x>", 1, None)
    known = log.get("k")
    assert (known.status, known.message_id, known.attempts) == (SENDING, "<m1@x>", 1)
    # A retry (attempt 2) takes the record over from the failed attempt.
    log.begin("k", "<m1@x>", 2, known)
    log.sent("k", "<m1@x>", 2, T0)
    done = log.get("k")
    assert (done.status, done.attempts, done.sent_at) == (SENT, 2, "2026-12-01T19:00:00.000000Z")
    # Giving up later (e.g. a copy out of retries) never turns a sent email into a failed one.
    assert log.failed("k", "421 busy", 4, permanent=False).status == SENT


def test_failures_are_recorded_permanent_or_not(stores):
    log = DeliveryLog(stores[0], clock=Clock())
    log.begin("k1", "<m@x>", 1, None)
    refused = log.failed("k1", "550 no such user", 1, permanent=True)
    assert (refused.status, refused.permanent, refused.error) == (FAILED, True, "550 no such user")
    exhausted = log.failed("k2", "timed out", 4, permanent=False)
    assert (exhausted.status, exhausted.permanent) == (FAILED, False)


def test_the_second_of_two_workers_starting_the_same_job_backs_off(stores):
    first, second = DeliveryLog(stores[0]), DeliveryLog(stores[1])
    seen_first, seen_second = first.get("k"), second.get("k")
    first.begin("k", "<m@x>", 1, seen_first)
    with pytest.raises(DeliveryInProgress):
        second.begin("k", "<m@x>", 1, seen_second)
    # The same when both took over an older record.
    old_a, old_b = first.get("k"), second.get("k")
    first.begin("k", "<m@x>", 2, old_a)
    with pytest.raises(DeliveryInProgress):
        second.begin("k", "<m@x>", 2, old_b)


def test_prune_forgets_only_old_records(stores):
    clock = Clock()
    log = DeliveryLog(stores[0], clock=clock)
    log.sent("old", "<a@x>", 1, T0)
    clock.now = T0 + timedelta(days=6)
    log.sent("recent", "<b@x>", 1, clock.now)
    clock.now = T0 + timedelta(days=8)
    assert log.prune(timedelta(days=7)) == 1
    assert log.get("old") is None
    assert log.get("recent").status == SENT


def test_a_sending_record_is_held_by_its_live_owner_until_its_lease_ends(stores):
    clock = Clock()
    first = DeliveryLog(stores[0], clock=clock, lease=timedelta(seconds=60))
    second = DeliveryLog(stores[1], clock=clock, lease=timedelta(seconds=60))
    first.begin("k", "<m@x>", 1, None)
    known = second.get("k")
    assert (known.owner, known.lease_until) == (first.owner, "2026-12-01T19:01:00.000000Z")
    # This process is alive: the other worker waits; the owner itself never does.
    assert second.held_elsewhere(known)
    assert not first.held_elsewhere(known)
    clock.now = T0 + timedelta(seconds=61)
    assert not second.held_elsewhere(second.get("k"))


def test_a_lease_ends_with_its_attempt_or_with_its_owner_process(stores):
    clock = Clock()
    first, second = DeliveryLog(stores[0], clock=clock), DeliveryLog(stores[1], clock=clock)
    first.begin("k", "<m@x>", 1, None)
    first.release("k")  # the attempt failed (e.g. a 421): a retry anywhere goes ahead
    released = second.get("k")
    assert (released.status, released.lease_until) == (SENDING, None)
    assert not second.held_elsewhere(released)
    # Releasing someone else's lease does nothing.
    second.begin("k", "<m@x>", 2, released)
    first.release("k")
    assert first.held_elsewhere(first.get("k"))
    # A process of this host that exited holds nothing (a crashed worker restarted here).
    gone = DeliveryLog(stores[0], clock=clock, owner=f"{socket.gethostname()}:{_exited_pid()}:x")
    gone.begin("k2", "<m@x>", 1, None)
    assert not second.held_elsewhere(second.get("k2"))
    # An owner on another host is trusted until its lease ends.
    far = DeliveryLog(stores[0], clock=clock, owner="elsewhere:1:x")
    far.begin("k3", "<m@x>", 1, None)
    assert second.held_elsewhere(second.get("k3"))
    # Sent or failed records hold nothing.
    first.sent("k3", "<m@x>", 1, T0)
    assert not second.held_elsewhere(second.get("k3"))


def test_a_worker_waits_while_another_sends_and_then_sees_it_sent(stores):
    first, second = DeliveryLog(stores[0]), DeliveryLog(stores[1])
    first.begin("k", "<m@x>", 1, None)
    finished = threading.Timer(0.3, lambda: first.sent("k", "<m@x>", 1, T0))
    finished.start()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    seen = second.wait_while_held("k", second.get("k"), poll=0.05, sleep=sleep)
    finished.join()
    assert seen is not None and seen.status == SENT
    assert waits  # it did wait for the other one


def test_waiting_is_bounded_by_the_lease(stores):
    first = DeliveryLog(stores[0], owner="elsewhere:1:x")
    second = DeliveryLog(stores[1], lease=timedelta(seconds=0.2))
    first.begin("k", "<m@x>", 1, None)
    seen = second.wait_while_held("k", second.get("k"), poll=0.05)
    assert seen is not None and seen.status == SENDING  # given up waiting: it sends itself


def _exited_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid
