"""The broker goes away in the middle of a dispatch and comes back: nothing is lost, nothing
is sent twice.

The shared RabbitMQ must not be restarted (other engineers' tests use it), so the outage is
simulated: the dispatcher and the notifications worker (its relay and consumers) reach the
broker only through a TCP proxy in this test, which is taken down (listener closed, every
connection through it cut) while reminders fall due, and brought back two seconds later. The
real email-sender (connected to the broker directly) delivers to an aiosmtpd sink; emails are
counted there by their idempotency-key header, outcomes are checked on the reminders."""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devtools.smtp_sink import Mailbox, SmtpSink
from email_sender.compose import IDEMPOTENCY_HEADER
from eventpost.storage.sqlite import SqliteStore
from eventpost.timeutil import utcnow
from services.notifications.store import NotificationsStore
from tests.integration._amqp import Broker, broker, unique, wait_until
from tests.integration.test_dispatcher_support import (
    dispatcher,
    email_sender,
    env_for,
    proxy_to,
    seed,
    worker,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
__all__ = ["broker"]

COUNT = 300


def test_broker_unreachable_mid_dispatch_loses_nothing(broker: Broker, tmp_path: Path):
    store = SqliteStore(tmp_path / "notifications.sqlite3")
    coll = NotificationsStore(store).collection
    mailbox = Mailbox(tmp_path / "mail")
    real = urlsplit(broker.url)
    sender_queue = broker.queue_name("email-sender")
    prefix = unique("notifications")
    broker.queues.extend(
        f"{prefix}.{q}" for q in ("email-outcomes", "event-changes", "user-deleted")
    )
    parts = []
    with SmtpSink(tmp_path / "mail") as sink, proxy_to(real.hostname, real.port or 5672) as proxy:
        try:
            sender_args = ["--exchange", broker.exchange, "--queue", sender_queue]
            sender_env = env_for(tmp_path / "sender", broker.url, SMTP_PORT=str(sink.port))
            parts.append(
                email_sender(
                    "email-sender", sender_env, tmp_path, *sender_args, "--bindings", "email.send"
                )
            )
            via_proxy = env_for(tmp_path, proxy.url)
            ours = ["--exchange", broker.exchange, "--relay-lease", "2"]
            parts.append(worker("worker", via_proxy, tmp_path, *ours, "--queue-prefix", prefix))
            parts.append(dispatcher("dispatcher", via_proxy, tmp_path, *ours, "--batch", "10"))
            wait_until(lambda: broker.consumers(sender_queue) >= 1, timeout=30, what="sender")
            wait_until(
                lambda: broker.consumers(f"{prefix}.email-outcomes") >= 1,
                timeout=30,
                what="the worker's consumers",
            )
            # Due one after another over three seconds, starting in one second.
            start = utcnow() + timedelta(seconds=1)
            ids = seed(store, COUNT, lambda i: start + timedelta(seconds=3 * i / COUNT))
            wait_until(lambda: len(mailbox.paths()) >= 30, timeout=30, what="first emails")
            proxy.down()
            outage_ends = time.monotonic() + 2.0
            held_in_outbox = 0
            while time.monotonic() < outage_ends:  # the outage is about time: real waiting
                held_in_outbox = max(held_in_outbox, store.outbox_pending())
                time.sleep(0.05)
            proxy.up()
            wait_until(lambda: len(mailbox.paths()) >= COUNT, timeout=90, what="every email")
            wait_until(
                lambda: coll.count({"status": "sent"}) == COUNT,
                timeout=60,
                what="every outcome recorded",
            )
            time.sleep(1.0)  # a duplicate still on its way would land now
        except BaseException:
            for part in parts:
                print(f"--- {part.name}\n{part.log()[-4000:]}")
            raise
        finally:
            codes = {part.name: part.stop() for part in parts}
    keys = Counter(str(m[IDEMPOTENCY_HEADER]) for m in mailbox.messages())
    assert {k: n for k, n in keys.items() if n > 1} == {}
    assert sorted(k.split(":")[1] for k in keys) == sorted(ids)
    assert held_in_outbox > 0, "the outage should have caught jobs in the outbox"
    assert proxy.connections > 3, "the processes should have reconnected through the proxy"
    assert codes == {"email-sender": 0, "worker": 0, "dispatcher": 0}
    store.close()
