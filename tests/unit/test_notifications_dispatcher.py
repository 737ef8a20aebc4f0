"""The reminder dispatcher over a real SqliteStore, clock injected, no broker (its jobs are
checked in the outbox)."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta

import pytest

from eventpost.storage import StorageError
from eventpost.storage.sqlite import SqliteStore
from eventpost.timeutil import format_time
from services.notifications import domain
from services.notifications.dispatcher import ReminderDispatcher
from services.notifications.store import NotificationsStore
from tests.unit.test_notifications_domain import EVENT, USER
from tests.unit.test_notifications_support import Clock, any_store  # noqa: F401


@pytest.fixture
def store(any_store):  # noqa: F811
    return any_store


@pytest.fixture
def clock():
    return Clock()


def add(store, clock, n=1, *, in_seconds=0.0, prefix="n"):
    """Reminders set (at clock time) to go out ``in_seconds`` from now."""
    coll = NotificationsStore(store).collection
    ids = []
    for i in range(n):
        doc = domain.new_reminder(
            reminder_id=f"{prefix}{i}",
            owner="u1",
            event_id="ev1",
            event=EVENT,
            user=USER,
            send_at=format_time(clock() + timedelta(seconds=max(in_seconds, 0.001))),
            before=None,
            email=None,
            subject=None,
            message=None,
            now=clock(),
            request_id=f"rid-{i}",
        )
        if in_seconds <= 0:
            doc["send_at"] = format_time(clock() + timedelta(seconds=in_seconds))
        coll.insert(doc)
        ids.append(doc["id"])
    return ids


def jobs(store):
    return [e for e in store.iter_outbox() if e["type"] == "email.send"]


def dispatcher(store, clock, **kwargs):
    return ReminderDispatcher(store, clock=clock, **kwargs)


def test_due_reminders_become_sending_with_their_job_in_the_outbox(store, clock):
    (nid,) = add(store, clock)
    d = dispatcher(store, clock, owner="d1")
    assert d.run_once() == 1
    doc = NotificationsStore(store).collection.get(nid)
    assert doc["status"] == "sending"
    assert doc["lease_owner"] is None and doc["lease_until"] == domain.NO_LEASE
    (job,) = jobs(store)
    assert job["request_id"] == "rid-0"
    payload = job["payload"]
    assert payload["idempotency_key"] == f"reminder:{nid}:v{doc['version']}"
    assert payload["correlation"] == {"notification_id": nid, "version": doc["version"]}
    assert payload["template"] == "reminder"
    assert payload["to"] == USER["email"]
    assert payload["context"]["event"]["title"] == "Jazz night"
    # nothing more to do
    assert d.run_once() == 0
    assert len(jobs(store)) == 1


def test_never_before_send_at(store, clock):
    (nid,) = add(store, clock, in_seconds=5)
    d = dispatcher(store, clock)
    clock.advance(seconds=4.999)
    assert d.run_once() == 0
    assert NotificationsStore(store).collection.get(nid)["status"] == "scheduled"
    clock.advance(seconds=0.001)
    assert d.run_once() == 1
    assert jobs(store)


def test_batches_until_everything_due_is_handed_over(store, clock):
    add(store, clock, 25)
    assert dispatcher(store, clock, batch=7).run_once() == 25
    assert len(jobs(store)) == 25
    assert NotificationsStore(store).collection.count({"status": "sending"}) == 25


def test_two_dispatchers_never_share_a_claim(store, clock):
    add(store, clock, 10)
    a = dispatcher(store, clock, owner="a", batch=4)
    b = dispatcher(store, clock, owner="b", batch=4)
    first, second = a.claim(), b.claim()
    assert not {d["id"] for d in first} & {d["id"] for d in second}
    assert a.hand_over(first) + b.hand_over(second) == 8
    assert a.run_once() + b.run_once() == 2
    keys = [j["payload"]["idempotency_key"] for j in jobs(store)]
    assert len(keys) == len(set(keys)) == 10


def test_a_crashed_dispatchers_claims_return_after_the_lease(store, clock):
    add(store, clock, 3)
    crashed = dispatcher(store, clock, owner="crashed", lease_seconds=30)
    held = crashed.claim()
    assert len(held) == 3
    other = dispatcher(store, clock, owner="other", lease_seconds=30)
    assert other.run_once() == 0  # still leased
    clock.advance(seconds=30.001)
    assert other.run_once() == 3
    # the crashed one "wakes up" and completes its stale claims: nothing changes
    assert crashed.hand_over(held) == 0
    assert len(jobs(store)) == 3
    assert {j["payload"]["idempotency_key"] for j in jobs(store)} == {
        f"reminder:{d['id']}:v{d['version'] + 2}" for d in held
    }


@pytest.mark.parametrize("change", ["cancel", "delete", "patch", "follow"])
def test_a_reminder_changed_after_the_claim_is_not_sent_by_that_claim(store, clock, change):
    (nid,) = add(store, clock)
    coll = NotificationsStore(store).collection
    d = dispatcher(store, clock, owner="d1")
    held = d.claim()
    doc = coll.get(nid)
    if change == "cancel":
        coll.update(nid, {"status": "cancelled", "lease_until": domain.NO_LEASE})
    elif change == "delete":
        coll.delete(nid)
    elif change == "patch":
        changes = domain.reminder_changes(doc, {"delay": timedelta(hours=1)}, now=clock())
        coll.update(nid, changes, expected_version=doc["version"])
    else:
        moved = {**EVENT, "title": "Renamed", "updated_at": "2026-10-09T00:00:00Z"}
        coll.update(nid, domain.follow_event(doc, moved, clock()))
    assert d.hand_over(held) == 0
    assert jobs(store) == []
    # a cancelled, deleted or postponed reminder is not sent later either...
    clock.advance(seconds=1)
    sent = d.run_once()
    if change == "follow":
        # ...but a refreshed one goes out at once, with the fresh snapshot
        assert sent == 1
        assert jobs(store)[0]["payload"]["context"]["event"]["title"] == "Renamed"
    else:
        assert sent == 0 and jobs(store) == []


def test_next_wait_wakes_for_the_next_due_reminder(store, clock):
    d = dispatcher(store, clock, interval=1.0)
    assert d.next_wait() == 1.0
    add(store, clock, in_seconds=0.25)
    assert d.next_wait() == pytest.approx(0.25)
    add(store, clock, in_seconds=30, prefix="later")
    assert d.next_wait() == pytest.approx(0.25)


class ConflictingTransactions(SqliteStore):
    """A store whose multi-write transactions fail as a whole and are rolled back (as two
    dispatchers' MongoDB transactions can), while single writes work."""

    @contextmanager
    def transaction(self):
        with super().transaction():
            yield
            raise StorageError("WriteConflict: the transaction was aborted")


def test_a_failing_batch_transaction_is_redone_write_by_write(tmp_path, clock):
    store = ConflictingTransactions(tmp_path / "c.sqlite3", synchronous="NORMAL")
    ids = add(store, clock, 5)
    d = dispatcher(store, clock, owner="d1")
    assert d.run_once() == 5
    keys = sorted(j["payload"]["idempotency_key"] for j in jobs(store))
    assert [k.split(":")[1] for k in keys] == sorted(ids)
    assert NotificationsStore(store).collection.count({"status": "sending"}) == 5
    store.close()


def test_the_deployable_dispatcher_has_no_fault_injection(store):
    """Holding claims on purpose is test tooling (tests/integration/pausing_dispatcher)."""
    from services.notifications.dispatcher import main

    with pytest.raises(TypeError):
        ReminderDispatcher(store, pause_after_claim=1.0)
    with pytest.raises(SystemExit) as exit_:
        main(["--pause-after-claim", "1"])
    assert exit_.value.code == 2
