"""OutboxRelay's failure rules without a broker: which failures count against an event,
when it is parked, and what an outage or an unroutable job does (the real-RabbitMQ side is
in tests/integration/test_messaging_relay.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pika.exceptions
import pytest

from eventpost.messaging import Envelope, OutboxRelay, PublishError, Unroutable
from eventpost.storage import CollectionSpec
from eventpost.storage.sqlite import SqliteStore

THINGS = CollectionSpec("things")


def publish_error(cause: BaseException) -> PublishError:
    error = PublishError(f"could not publish: {cause!r}")
    error.__cause__ = cause
    return error


class FakePublisher:
    """Takes every envelope but the types in ``failures`` (raising what is given there)."""

    def __init__(self, failures: dict[str, BaseException] | None = None) -> None:
        self.failures = failures or {}
        self.published: list[str] = []

    def publish(self, envelope: Envelope) -> None:
        if envelope.type in self.failures:
            raise self.failures[envelope.type]
        self.published.append(envelope.id)

    def publish_many(
        self, envelopes: list[Envelope], *, timeout: float | None = None
    ) -> list[PublishError | None]:
        results: list[PublishError | None] = []
        for envelope in envelopes:
            try:
                self.publish(envelope)
            except PublishError as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    def keepalive(self) -> None:
        pass


class LeapingClock:
    """Epoch seconds that leap a minute at every look: each claim finds earlier leases over,
    so a refused event is tried again at the next round."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 60.0
        return self.now


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = SqliteStore(tmp_path / "svc.sqlite3", synchronous="NORMAL", clock=LeapingClock())
    yield opened
    opened.close()


def save(store: SqliteStore, *envelopes: Envelope) -> None:
    things = store.collection(THINGS)
    for env in envelopes:
        things.insert({"id": env.id}, events=[env.to_dict()])


def relay_for(store: SqliteStore, publisher: FakePublisher, **options) -> OutboxRelay:  # type: ignore[no-untyped-def]
    return OutboxRelay(store, publisher, lease_seconds=30.0, **options)  # type: ignore[arg-type]


NACKED = publish_error(pika.exceptions.NackError([]))
REFUSED = publish_error(pika.exceptions.ShortStringTooLong(b"x" * 300))
UNREACHABLE = publish_error(pika.exceptions.AMQPConnectionError("refused"))
LOST = publish_error(pika.exceptions.StreamLostError("lost"))


@pytest.mark.parametrize("refusal", [NACKED, REFUSED], ids=["nack", "unframeable"])
def test_a_refused_event_is_parked_after_park_after_failures(store, refusal):
    good, poison, later = Envelope.new("ok", {}), Envelope.new("bad", {}), Envelope.new("ok", {})
    save(store, good, poison)
    publisher = FakePublisher({"bad": refusal})
    relay = relay_for(store, publisher, park_after=3)
    assert relay.run_once() == 1  # the good one; the refusal is counted (the broker took one)
    save(store, later)
    assert relay.run_once() == 1
    assert relay.run_once() == 0
    assert publisher.published == [good.id, later.id]
    [parked] = store.outbox_parked()
    assert (parked.event["id"], parked.attempts) == (poison.id, 3)
    assert parked.reason == str(refusal)
    assert relay.run_once() == 0
    assert store.outbox_parked()[0].attempts == 3  # never claimed again


def test_a_refusal_before_the_broker_took_anything_does_not_count(store):
    poison, good = Envelope.new("bad", {}), Envelope.new("ok", {})
    save(store, poison, good)
    relay = relay_for(store, FakePublisher({"bad": NACKED}), park_after=1)
    assert relay.run_once() == 1
    assert store.outbox_parked() == []
    assert relay.run_once() == 0  # now the broker has taken one: this refusal counts
    assert [p.event["id"] for p in store.outbox_parked()] == [poison.id]


@pytest.mark.parametrize("outage", [UNREACHABLE, LOST], ids=["refused", "lost"])
def test_an_outage_stops_the_round_and_counts_against_nobody(store, outage):
    first, second = Envelope.new("ok", {}), Envelope.new("down", {})
    save(store, first, second)
    publisher = FakePublisher({"down": outage})
    relay = relay_for(store, publisher, park_after=1)
    with pytest.raises(PublishError):
        relay.run_once()
    assert publisher.published == [first.id]
    assert store.outbox_pending() == 1
    assert store.outbox_parked() == []
    # after an outage a refusal counts only once the broker took a message again
    publisher.failures = {"down": NACKED}
    assert relay.run_once() == 0
    assert store.outbox_parked() == []


def test_an_unroutable_job_waits_in_the_outbox_without_drop_unroutable(store):
    job = Envelope.new("email.send", {})
    save(store, job)
    unroutable = Unroutable("no queue is bound to 'email.send'")
    relay = relay_for(store, FakePublisher({"email.send": unroutable}), park_after=1)
    relay.drop_unroutable = False
    for _ in range(3):
        with pytest.raises(PublishError, match="stays in the outbox"):
            relay.run_once()
    assert store.outbox_pending() == 1
    assert store.outbox_parked() == []
    relay.drop_unroutable = True
    assert relay.run_once() == 1
    assert store.outbox_pending() == 0


def test_a_record_that_is_not_an_envelope_is_parked(store):
    store.collection(THINGS).insert({"id": "t1"}, events=[{"id": "ev-broken", "type": "x"}])
    relay = relay_for(store, FakePublisher(), park_after=2)
    assert relay.run_once() == 0
    assert relay.run_once() == 0
    [parked] = store.outbox_parked()
    assert (parked.event["id"], parked.attempts) == ("ev-broken", 2)
    assert parked.reason.startswith("not a valid envelope")


def test_park_after_must_be_positive(store):
    with pytest.raises(ValueError):
        relay_for(store, FakePublisher(), park_after=0)


def test_wake_hurries_a_relay_waiting_for_its_poll(store):
    publisher = FakePublisher()
    relay = OutboxRelay(store, publisher, poll_interval=3600.0)  # type: ignore[arg-type]
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop, wake), daemon=True)
    thread.start()
    try:
        for n in range(3):
            env = Envelope.new("ok", {"n": n})
            save(store, env)
            wake.set()
            deadline = time.monotonic() + 20  # a bound against hangs, not a speed assertion
            while env.id not in publisher.published and time.monotonic() < deadline:
                time.sleep(0.01)
            assert env.id in publisher.published
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
