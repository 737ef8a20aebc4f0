"""The outbox (events written with the change) and transactions."""

from __future__ import annotations

import pytest

from eventpost.storage import DuplicateKey, VersionConflict
from tests.contract.conftest import needs


def event(n: int | str, kind: str = "thing.happened") -> dict:
    return {
        "id": f"ev-{n}",
        "type": kind,
        "occurred_at": "2026-01-01T00:00:00.000000Z",
        "request_id": "req-1",
        "payload": {"n": n},
    }


def claimed_ids(store, owner: str = "relay-1", lease: float = 30.0, limit: int = 100):
    return [e["id"] for e in store.outbox_claim(owner, lease, limit)]


def test_events_written_with_writes_are_claimable_oldest_first(store, events):
    events.insert({"id": "e1"}, events=[event(1), event(2)])
    events.update("e1", {"title": "x"}, events=[event(3)])
    events.update_many({"id": "e1"}, {"title": "y"}, events=[event(4)])
    events.delete("e1", events=[event(5)])
    events.insert({"id": "e2"})
    events.delete_many({"id": "e2"}, events=[event(6)])
    assert store.outbox_pending() == 6
    claimed = store.outbox_claim("relay-1", 30.0)
    assert [e["id"] for e in claimed] == [f"ev-{n}" for n in range(1, 7)]
    assert claimed[0] == event(1)


def test_claim_respects_the_limit(store, events):
    events.insert({"id": "e1"}, events=[event(n) for n in range(5)])
    assert claimed_ids(store, limit=2) == ["ev-0", "ev-1"]
    assert claimed_ids(store, limit=10) == ["ev-2", "ev-3", "ev-4"]


def test_claimed_events_are_leased_until_the_lease_runs_out(store, events, clock):
    events.insert({"id": "e1"}, events=[event(1), event(2)])
    assert claimed_ids(store, "relay-1", lease=30) == ["ev-1", "ev-2"]
    assert claimed_ids(store, "relay-2") == []
    clock.advance(29)
    assert claimed_ids(store, "relay-2") == []
    events.insert({"id": "e2"}, events=[event(3)])
    assert claimed_ids(store, "relay-2") == ["ev-3"]
    clock.advance(2)
    assert claimed_ids(store, "relay-2") == ["ev-1", "ev-2"]
    assert store.outbox_pending() == 3


def test_done_removes_events(store, events):
    events.insert({"id": "e1"}, events=[event(1), event(2), event(3)])
    claimed_ids(store)
    store.outbox_done(["ev-1", "ev-3", "ev-unknown"])
    assert store.outbox_pending() == 1
    assert [e["id"] for e in store.iter_outbox()] == ["ev-2"]
    store.outbox_done([])
    assert store.outbox_pending() == 1


def test_a_failed_write_leaves_no_event(store, people):
    people.insert({"id": "p1", "email": "a@x.org"}, events=[event(1)])
    with pytest.raises(DuplicateKey):
        people.insert({"id": "p2", "email": "a@x.org"}, events=[event(2)])
    with pytest.raises(DuplicateKey):
        people.insert({"id": "p1"}, events=[event(3)])
    with pytest.raises(VersionConflict):
        people.update("p1", {"email": "b@x.org"}, expected_version=5, events=[event(4)])
    with pytest.raises(VersionConflict):
        people.delete("p1", expected_version=5, events=[event(5)])
    assert claimed_ids(store) == ["ev-1"]


def test_a_write_that_changes_nothing_writes_no_event(store, people):
    assert people.delete("nobody", events=[event(1)]) is False
    assert people.update_many({"email": "none"}, {"x": 1}, events=[event(2)]) == 0
    assert people.delete_many({"email": "none"}, events=[event(3)]) == 0
    assert store.outbox_pending() == 0


def test_an_event_needs_an_id(store, people):
    with pytest.raises(ValueError):
        people.insert({"id": "p1"}, events=[{"type": "no.id"}])
    assert store.outbox_pending() == 0
    assert people.get("p1") is None


def test_a_transaction_commits_every_write(store, events, people):
    with store.transaction():
        events.insert({"id": "e1"}, events=[event(1)])
        people.insert({"id": "p1", "email": "a@x.org"}, events=[event(2)])
        assert events.get("e1") is not None  # the transaction sees its own writes
    assert events.get("e1") is not None
    assert people.get("p1") is not None
    assert claimed_ids(store) == ["ev-1", "ev-2"]


def test_an_exception_in_a_transaction_rolls_back_every_write(store, events, people):
    needs(store, "transactions")
    events.insert({"id": "kept", "title": "before"})
    with pytest.raises(RuntimeError), store.transaction():
        events.insert({"id": "e1"}, events=[event(1)])
        events.update("kept", {"title": "changed"}, events=[event(2)])
        people.insert({"id": "p1", "email": "a@x.org"}, events=[event(3)])
        people.claim({}, {"status": "claimed"})
        raise RuntimeError("boom")
    assert events.get("e1") is None
    assert events.get("kept")["title"] == "before"
    assert people.get("p1") is None
    assert store.outbox_pending() == 0


def test_a_duplicate_key_in_a_transaction_rolls_it_back(store, people):
    needs(store, "transactions")
    people.insert({"id": "p1", "email": "a@x.org"})
    with pytest.raises(DuplicateKey), store.transaction():
        people.insert({"id": "p2", "email": "b@x.org"}, events=[event(1)])
        people.insert({"id": "p3", "email": "a@x.org"}, events=[event(2)])
    assert people.get("p2") is None
    assert store.outbox_pending() == 0


def test_a_nested_transaction_joins_the_outer_one(store, events):
    needs(store, "transactions")
    with pytest.raises(RuntimeError), store.transaction():
        with store.transaction():
            events.insert({"id": "inner"}, events=[event(1)])
        assert events.get("inner") is not None
        raise RuntimeError("outer fails")
    assert events.get("inner") is None
    assert store.outbox_pending() == 0
    with store.transaction():
        with store.transaction():
            events.insert({"id": "inner"})
        events.insert({"id": "outer"})
    assert events.count({}) == 2


# -- failed publishes and parking ---------------------------------------------------------


def test_failed_publishes_are_counted_and_the_event_comes_back_after_its_lease(
    store, events, clock
):
    events.insert({"id": "e1"}, events=[event(1), event(2)])
    assert claimed_ids(store, lease=30) == ["ev-1", "ev-2"]
    assert store.outbox_failed("ev-1", "refused", park_after=3) == 1
    assert claimed_ids(store) == []  # the lease stays: tried again when it ends
    clock.advance(31)
    assert claimed_ids(store) == ["ev-1", "ev-2"]
    assert store.outbox_failed("ev-1", "refused again", park_after=3) == 2
    assert store.outbox_pending() == 2
    assert store.outbox_parked() == []


def test_an_event_is_parked_at_its_last_allowed_attempt(store, events, clock):
    events.insert({"id": "e1"}, events=[event(1), event(2), event(3)])
    assert claimed_ids(store, lease=10) == ["ev-1", "ev-2", "ev-3"]
    assert store.outbox_failed("ev-2", "refused 1", park_after=2) == 1
    store.outbox_done(["ev-1", "ev-3"])
    clock.advance(11)
    assert claimed_ids(store, lease=10) == ["ev-2"]
    assert store.outbox_failed("ev-2", "refused 2", park_after=2) == 2
    clock.advance(1000)
    assert claimed_ids(store) == []  # parked: never leased again
    assert store.outbox_pending() == 0
    assert list(store.iter_outbox()) == []
    [parked] = store.outbox_parked()
    assert (parked.event, parked.attempts, parked.reason) == (event(2), 2, "refused 2")


def test_a_parked_event_stays_while_the_others_flow(store, events, clock):
    events.insert({"id": "e1"}, events=[event(1)])
    claimed_ids(store)
    assert store.outbox_failed("ev-1", "poison", park_after=1) == 1
    events.insert({"id": "e2"}, events=[event(2)])
    assert claimed_ids(store) == ["ev-2"]
    store.outbox_done(["ev-2"])
    assert [p.event["id"] for p in store.outbox_parked()] == ["ev-1"]
    assert store.outbox_failed("ev-1", "again", park_after=1) == 0  # parked: not counted
    assert store.outbox_parked()[0].attempts == 1


def test_a_failure_of_an_unknown_event_counts_nothing(store, events):
    assert store.outbox_failed("ev-unknown", "gone", park_after=1) == 0
    events.insert({"id": "e1"}, events=[event(1)])
    store.outbox_done(["ev-1"])
    assert store.outbox_failed("ev-1", "published meanwhile", park_after=1) == 0
    assert store.outbox_parked() == []
