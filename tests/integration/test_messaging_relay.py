"""Outbox relay with the SQLite store and the real RabbitMQ: order, failures, and a relay
process killed between claiming and publishing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from eventpost.messaging import Envelope, OutboxRelay, Publisher, PublishError
from eventpost.storage import CollectionSpec
from eventpost.storage.sqlite import SqliteStore
from tests.integration._amqp import (
    REPO_ROOT,
    Broker,
    broker,
    finish,
    helper_process,
    unique,
    wait_until,
)

pytestmark = pytest.mark.rabbitmq
__all__ = ["broker"]  # the fixture, imported for pytest

THINGS = CollectionSpec("things")


def save_events(store: SqliteStore, *envelopes: Envelope) -> None:
    """Each envelope saved the way services do: with a state change, in one operation."""
    things = store.collection(THINGS)
    for env in envelopes:
        things.insert({"id": env.id}, events=[env.to_dict()])


def publisher_for(b: Broker) -> Publisher:
    return Publisher(b.url, exchange=b.exchange, connection_name=unique("test-relay-publisher"))


def received_ids(b: Broker, queue: str) -> list[str]:
    return [Envelope.from_bytes(body).id for _m, _p, body in b.take_all(queue)]


def test_run_once_publishes_in_order_and_empties_the_outbox(broker: Broker, tmp_path: Path):
    key = unique("k")
    sink = broker.bound_queue(key)
    store = SqliteStore(tmp_path / "svc.sqlite3")
    envelopes = [Envelope.new(key, {"n": n}, request_id=f"req-{n}") for n in range(5)]
    save_events(store, *envelopes)
    with publisher_for(broker) as publisher:
        relay = OutboxRelay(store, publisher, batch=3)
        assert relay.run_once() == 3
        assert relay.run_once() == 2
        assert relay.run_once() == 0
    assert received_ids(broker, sink) == [e.id for e in envelopes]
    assert store.outbox_pending() == 0
    store.close()


def test_event_nobody_subscribes_to_leaves_the_outbox(broker: Broker, tmp_path: Path):
    key = unique("k")
    sink = broker.bound_queue(key)
    store = SqliteStore(tmp_path / "svc.sqlite3")
    orphan, wanted = Envelope.new(unique("unbound"), {}), Envelope.new(key, {})
    save_events(store, orphan, wanted)
    with publisher_for(broker) as publisher:
        assert OutboxRelay(store, publisher).run_once() == 2
    assert received_ids(broker, sink) == [wanted.id]
    assert store.outbox_pending() == 0
    store.close()


def test_failed_publish_keeps_the_events_until_the_lease_runs_out(broker: Broker, tmp_path):
    key = unique("k")
    sink = broker.bound_queue(key)
    store = SqliteStore(tmp_path / "svc.sqlite3")
    envelopes = [Envelope.new(key, {"n": n}) for n in range(3)]
    save_events(store, *envelopes)

    down = Publisher("amqp://guest:guest@127.0.0.1:1/%2F", connect_timeout=1.0)
    with pytest.raises(PublishError):
        OutboxRelay(store, down, owner="dead", lease_seconds=0.5).run_once()
    assert store.outbox_pending() == 3

    with publisher_for(broker) as publisher:
        relay = OutboxRelay(store, publisher, owner="alive")
        assert relay.run_once() == 0  # still leased to the failed relay
        wait_until(lambda: relay.run_once() == 3, what="the lease to run out")
    assert received_ids(broker, sink) == [e.id for e in envelopes]
    assert store.outbox_pending() == 0
    store.close()


@pytest.mark.slow
def test_relay_killed_between_claim_and_publish_publishes_after_restart(
    broker: Broker, tmp_path: Path
):
    key = unique("k")
    sink = broker.bound_queue(key)
    service = "relaytest"
    store_path = tmp_path / f"{service}.sqlite3"
    store = SqliteStore(store_path)
    envelopes = [Envelope.new(key, {"n": n}, request_id=f"req-relay-{n}") for n in range(5)]
    save_events(store, *envelopes)

    marker = tmp_path / "claimed"
    doomed = helper_process(
        "relay",
        *("--store", str(store_path), "--exchange", broker.exchange, "--lease", "1"),
        *("--hang-after-claim", "--marker", str(marker)),
    )
    try:
        wait_until(marker.exists, what="the first relay to claim")
    finally:
        doomed.kill()  # SIGKILL: events claimed, none published
        doomed.wait(10)
    assert marker.read_text() == envelopes[0].id
    assert store.outbox_pending() == 5
    assert broker.depth(sink) == 0

    # The real entry point, on the same store (DATA_DIR/<service>.sqlite3).
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URL"}
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventpost.messaging.relay",
            "--service",
            service,
            "--exchange",
            broker.exchange,
        ],
        cwd=REPO_ROOT,
        env={**env, "PYTHONPATH": str(REPO_ROOT), "DATA_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: broker.depth(sink) == 5, what="the events after the restart")
        wait_until(lambda: store.outbox_pending() == 0, what="the outbox to empty")
    finally:
        relay.send_signal(signal.SIGTERM)
        code, output = finish(relay)
    assert code == 0, output
    assert received_ids(broker, sink) == [e.id for e in envelopes]

    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    published = [line for line in lines if line["message"] == "event published"]
    assert [(p["message_id"], p["request_id"]) for p in published] == [
        (e.id, e.request_id) for e in envelopes
    ]
    assert all(p["service"] == f"{service}-relay" for p in published)
    store.close()
