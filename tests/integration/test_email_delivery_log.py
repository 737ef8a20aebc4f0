"""The delivery log on the SQLite store: states, the race between two workers, pruning."""

from __future__ import annotations

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
