"""The notifications worker (relay + consumers) in-process against the real RabbitMQ, on the
test's own exchange and queues: domain events change reminders once, the cancellation emails
leave through the outbox."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from eventpost import contracts
from eventpost.messaging import Envelope, Publisher
from eventpost.settings import Settings
from eventpost.storage.sqlite import SqliteStore
from eventpost.timeutil import utcnow
from services.notifications import domain
from services.notifications.store import NotificationsStore
from services.notifications.worker import build_worker
from tests.integration._amqp import Broker, broker, unique, wait_until
from tests.integration.test_dispatcher_support import EVENT

pytestmark = pytest.mark.rabbitmq
__all__ = ["broker"]


def reminder(store, rid: str, owner: str, *, before=None, send_at=None):
    doc = domain.new_reminder(
        reminder_id=rid,
        owner=owner,
        event_id=EVENT["id"],
        event=EVENT,
        user={"email": f"{owner}@example.com"},
        send_at=send_at,
        before=before,
        email=None,
        subject=None,
        message=None,
        now=utcnow(),
        request_id="create",
    )
    return NotificationsStore(store).collection.insert(doc)


def test_worker_follows_cancels_and_forgets(broker: Broker, tmp_path: Path):
    settings = Settings(
        service="notifications", data_dir=tmp_path, amqp_url=broker.url, retry_delays=(0.5,)
    )
    store = SqliteStore(tmp_path / "notifications.sqlite3")
    coll = NotificationsStore(store).collection
    rel = reminder(store, "rel", "ann", before=timedelta(hours=1))
    absolute = reminder(store, "abs", "bob", send_at="2029-06-01T10:00:00.000000Z")
    reminder(store, "gone", "carl", before=timedelta(days=1))
    jobs = broker.bound_queue(contracts.EMAIL_SEND)
    prefix = unique("notifications")
    broker.queues.extend(
        f"{prefix}.{q}" for q in ("email-outcomes", "event-changes", "user-deleted")
    )
    worker = build_worker(
        settings, store, exchange=broker.exchange, queue_prefix=prefix, relay_lease=2
    )
    thread = threading.Thread(target=lambda: worker.run(handle_signals=False), daemon=True)
    thread.start()
    publisher = Publisher(broker.url, exchange=broker.exchange)
    try:
        for queue in ("event-changes", "user-deleted"):
            wait_until(lambda q=queue: broker.consumers(f"{prefix}.{q}") >= 1, what="consumers")
        moved = {**EVENT, "starts_at": "2030-01-02T20:00:00Z", "updated_at": utcnow().isoformat()}
        update = Envelope.new(contracts.EVENT_UPDATED, {"event": moved}, request_id="admin-1")
        publisher.publish(update)
        wait_until(
            lambda: coll.get("rel")["send_at"] == "2030-01-02T19:00:00.000000Z", what="the move"
        )
        assert coll.get("abs")["send_at"] == absolute["send_at"]
        moved_doc = coll.get("rel")
        publisher.publish(update)  # a redelivered copy
        publisher.publish(
            Envelope.new(contracts.USER_DELETED, {"user_id": "carl"}, request_id="carl-bye")
        )
        wait_until(lambda: coll.get("gone") is None, what="carl's reminders deleted")
        assert coll.get("rel") == moved_doc  # the copy changed nothing
        publisher.publish(
            Envelope.new(
                contracts.EVENT_DELETED,
                {"event_id": EVENT["id"], "event": moved},
                request_id="admin-2",
            )
        )
        got: list[dict] = []

        def cancellations() -> bool:
            got.extend(json.loads(body) for *_, body in broker.take_all(jobs))
            return len(got) >= 2

        wait_until(cancellations, what="two cancellation emails")
    finally:
        publisher.close()
        worker.stop()
        thread.join(30)
    assert not thread.is_alive()
    assert coll.get("rel")["status"] == coll.get("abs")["status"] == "cancelled"
    assert rel["version"] < coll.get("rel")["version"]
    payloads = sorted((m["payload"] for m in got), key=lambda p: p["idempotency_key"])
    assert [p["idempotency_key"] for p in payloads] == [
        "event_cancelled:abs",
        "event_cancelled:rel",
    ]
    assert [p["to"] for p in payloads] == ["bob@example.com", "ann@example.com"]
    assert {m["request_id"] for m in got} == {"admin-2"}
    assert payloads[0]["context"]["event"]["starts_at"] == "2030-01-02T20:00:00.000000Z"
    assert store.outbox_pending() == 0
    store.close()
