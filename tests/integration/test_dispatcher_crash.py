"""The dispatcher as a real process over a real SqliteStore and the real RabbitMQ (its own
exchange per test): SIGKILL while it holds claims, several dispatchers at once.

A test queue bound to ``email.send`` on the test's exchange records every job published;
jobs are counted by idempotency key. The last test delivers through the real email-sender to
an aiosmtpd sink and counts emails."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from devtools.smtp_sink import Mailbox, SmtpSink
from email_sender.compose import IDEMPOTENCY_HEADER
from eventpost.storage import Range
from eventpost.storage.sqlite import SqliteStore
from eventpost.timeutil import format_time, utcnow
from services.notifications.store import NotificationsStore
from tests.integration._amqp import Broker, broker, wait_until
from tests.integration.test_dispatcher_support import (
    dispatcher,
    due_now,
    duplicates,
    email_sender,
    env_for,
    job_keys,
    seed,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
__all__ = ["broker"]


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "notifications.sqlite3")
    yield s
    s.close()


def collect(b: Broker, queue: str, keys: list[str], want: int, timeout: float, part=None):
    """Take jobs from ``queue`` into ``keys`` until ``want`` distinct keys arrived."""

    def enough() -> bool:
        keys.extend(job_keys(b, queue))
        return len(set(keys)) >= want

    try:
        wait_until(enough, timeout=timeout, what=f"{want} distinct jobs (have {len(set(keys))})")
    except BaseException:
        if part is not None:
            print(part.log()[-5000:])
        raise


def settle(b: Broker, queue: str, keys: list[str], store: SqliteStore) -> None:
    """Once the outbox is empty, take whatever else arrived (late duplicates included)."""
    wait_until(lambda: store.outbox_pending() == 0, timeout=30, what="an empty outbox")
    time.sleep(0.5)  # let publishes still in flight land before counting
    keys.extend(job_keys(b, queue))


def test_sigkill_while_holding_200_claims_then_restart(broker: Broker, store, tmp_path: Path):
    queue = broker.bound_queue("email.send")
    ids = seed(store, 200, due_now)
    env = env_for(tmp_path, broker.url)
    common = ("--exchange", broker.exchange, "--lease", "3", "--batch", "200")
    first = dispatcher("dispatcher-1", env, tmp_path, *common, pause_after_claim=120)
    coll = NotificationsStore(store).collection

    def holding() -> int:
        return coll.count({"status": "scheduled", "lease_until": Range(gt=format_time(utcnow()))})

    wait_until(lambda: holding() == 200, timeout=30, what="the first dispatcher's 200 claims")
    assert coll.count({"status": "sending"}) == 0
    assert store.outbox_pending() == 0
    first.kill()
    assert broker.depth(queue) == 0
    second = dispatcher("dispatcher-2", env, tmp_path, *common)
    try:
        keys: list[str] = []
        collect(broker, queue, keys, 200, timeout=60, part=second)
        settle(broker, queue, keys, store)
    finally:
        assert second.stop() == 0, second.log()[-3000:]
    assert duplicates(keys) == {}
    assert sorted(k.split(":")[1] for k in keys) == sorted(ids)
    assert coll.count({"status": "sending"}) == 200
    assert "dispatcher stopped" in second.log()


def test_two_dispatchers_over_1000_due_reminders(broker: Broker, store, tmp_path: Path):
    queue = broker.bound_queue("email.send")
    env = env_for(tmp_path, broker.url)
    # A short hold after each claim leaves the store to the other dispatcher meanwhile, so
    # the two really claim side by side (else the first awake may take everything at once).
    common = ("--exchange", broker.exchange, "--batch", "20")
    parts = [
        dispatcher(f"dispatcher-{n}", env, tmp_path, *common, pause_after_claim=0.02)
        for n in (1, 2)
    ]
    try:
        for part in parts:
            wait_until(lambda p=part: "dispatcher started" in p.log(), timeout=30, what="start")
        due = utcnow() + timedelta(seconds=1)
        ids = seed(store, 1000, lambda i: due + timedelta(seconds=i / 1000))
        keys: list[str] = []
        collect(broker, queue, keys, 1000, timeout=90, part=parts[0])
        settle(broker, queue, keys, store)
    finally:
        codes = [part.stop() for part in parts]
    assert codes == [0, 0]
    assert len(keys) == 1000 and duplicates(keys) == {}
    assert sorted(k.split(":")[1] for k in keys) == sorted(ids)
    coll = NotificationsStore(store).collection
    by = [coll.get(i)["dispatched_by"] for i in ids]
    assert len(set(by)) == 2, "both dispatchers should have taken a share"


def test_repeated_sigkill_mid_dispatch_delivers_each_email_once(broker: Broker, store, tmp_path):
    """SIGKILL at arbitrary moments (mid-claim, mid-hand-over, mid-publish, between a confirmed
    publish and the outbox record's removal), restart, repeat: every reminder is emailed
    exactly once, the real email-sender dropping the copies a crash may republish."""
    mailbox = Mailbox(tmp_path / "mail")
    sender_queue = broker.queue_name("email-sender")
    count = 600
    with SmtpSink(tmp_path / "mail") as sink:
        sender_env = env_for(tmp_path / "sender", broker.url, SMTP_PORT=str(sink.port))
        sender = email_sender(
            "email-sender", sender_env, tmp_path,
            "--exchange", broker.exchange, "--queue", sender_queue, "--bindings", "email.send",
        )  # fmt: skip
        env = env_for(tmp_path, broker.url)
        args = (
            "--exchange",
            broker.exchange,
            "--lease",
            "1",
            "--relay-lease",
            "1",
            "--batch",
            "25",
        )
        current = None
        try:
            wait_until(lambda: broker.consumers(sender_queue) >= 1, timeout=30, what="sender")
            start = utcnow() + timedelta(seconds=1)
            ids = seed(store, count, lambda i: start + timedelta(seconds=3 * i / count))
            rng = random.Random(7)
            for round_ in range(8):
                current = dispatcher(f"dispatcher-{round_}", env, tmp_path, *args)
                time.sleep(rng.uniform(0.4, 1.0))  # let it get somewhere, then pull the plug
                current.kill()
            current = dispatcher("dispatcher-last", env, tmp_path, *args)
            wait_until(lambda: len(mailbox.paths()) >= count, timeout=90, what="every email")
            wait_until(lambda: store.outbox_pending() == 0, timeout=30, what="an empty outbox")
            time.sleep(1.0)  # a duplicate still on its way would land now
        finally:
            if current is not None:
                current.stop()
            sender.stop()
    keys = Counter(str(m[IDEMPOTENCY_HEADER]) for m in mailbox.messages())
    assert {k: n for k, n in keys.items() if n > 1} == {}
    assert sorted(k.split(":")[1] for k in keys) == sorted(ids)
    assert NotificationsStore(store).collection.count({"status": "sending"}) == count
