"""Real traffic through a private broker while a test breaks it.

The production parts run as real processes with their production exchange and queue names
(the broker is the test's own): the users outbox relay, the notifications worker (its relay
and consumers), the reminder dispatcher (its relay) and the email-sender, delivering to an
aiosmtpd sink. The test writes ``user.created`` events into the users outbox and reminders
that fall due into the notifications store, spread over a few seconds; once the first emails
are in, ``fault()`` runs (stop the broker, kill a node, ...), then ``recover()``.

What is counted afterwards:

- *published*: an ``audit`` queue bound to ``#`` (of the same queue type as the consumers',
  so in a cluster it is replicated too) receives a copy of every message; the distinct
  envelope ids of each type are compared with what was written;
- *emails*: each email's idempotency-key header in the sink, exactly once each;
- the reminders' outcomes recorded by the notifications worker (every one ``sent``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pika
import pika.exceptions

from devtools.smtp_sink import Mailbox, SmtpSink
from email_sender.compose import IDEMPOTENCY_HEADER
from eventpost.contracts import UserCreated
from eventpost.messaging.topology import (
    connection_parameters,
    declare_bound_queue,
    declare_exchange,
)
from eventpost.storage import CollectionSpec
from eventpost.storage.sqlite import SqliteStore
from eventpost.timeutil import utcnow
from services.notifications.store import NotificationsStore
from tests.integration.test_dispatcher_support import Part, env_for, seed

AUDIT = "audit"
ACCOUNTS = CollectionSpec("accounts")
#: Generous bounds against hangs, not speed assertions.
SETTLE_TIMEOUT = 240.0


@dataclass
class Counts:
    """What one run saw (reported by the tests)."""

    written: dict[str, int] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    audit_copies: int = 0
    emails: int = 0
    emails_twice: int = 0
    emails_before_fault: int = 0
    held_in_outbox: int = 0
    reminders_sent: int = 0
    exit_codes: dict[str, int | None] = field(default_factory=dict)


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``predicate`` every ``interval`` s until truthy; AssertionError after ``timeout``
    seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class Traffic:
    """One run of real traffic over the broker(s) at ``amqp_url`` (see module docstring)."""

    def __init__(
        self,
        tmp: Path,
        amqp_url: str,
        *,
        queue_type: str = "classic",
        users: int = 500,
        reminders: int = 500,
        spread: float = 10.0,
    ) -> None:
        self.tmp = tmp
        self.amqp_url = amqp_url
        self.queue_type = queue_type
        self.users = users
        self.reminders = reminders
        self.spread = spread
        self.mailbox = Mailbox(tmp / "mail")
        self.parts: list[Part] = []
        self.user_ids: list[str] = []
        self.reminder_ids: list[str] = []
        self.counts = Counts(written={"user.created": users, "email.send": reminders})

    # -- the broker side -----------------------------------------------------------------

    def connect(self) -> pika.BlockingConnection:
        """A connection to whichever node answers first."""
        return pika.BlockingConnection(connection_parameters(self.amqp_url, "test-traffic"))

    def declare_audit(self) -> None:
        connection = self.connect()
        try:
            channel = connection.channel()
            declare_exchange(channel)
            declare_bound_queue(channel, AUDIT, ["#"], queue_type=self.queue_type)
        finally:
            connection.close()

    def consumers(self, queue: str) -> int:
        try:
            connection = self.connect()
        except (pika.exceptions.AMQPError, OSError):
            return 0
        try:
            return connection.channel().queue_declare(queue, passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        finally:
            if connection.is_open:
                connection.close()

    def audited(self) -> list[dict]:
        """Every message the audit queue holds (taken out of it)."""
        connection = self.connect()
        bodies: list[dict] = []
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=500)
            while True:
                method, _props, body = channel.basic_get(AUDIT, auto_ack=True)
                if method is None:
                    return bodies
                bodies.append(json.loads(body))
        finally:
            connection.close()

    # -- our processes -------------------------------------------------------------------

    def start_parts(self, smtp_port: int) -> None:
        env = env_for(
            self.tmp,
            self.amqp_url,
            SMTP_PORT=str(smtp_port),
            AMQP_QUEUE_TYPE=self.queue_type,
            DISPATCH_INTERVAL="0.2",
        )
        logs = self.tmp / "logs"
        logs.mkdir(exist_ok=True)
        specs = {
            "email-sender": ["-m", "email_sender"],
            "worker": ["-m", "services.notifications.worker", "--relay-lease", "3"],
            "dispatcher": ["-m", "services.notifications.dispatcher", "--relay-lease", "3"],
            "users-relay": ["-m", "eventpost.messaging.relay", "--service", "users"],
        }
        for name, argv in specs.items():
            self.parts.append(Part(name, argv, env, logs))
        wait_for(lambda: self.consumers("email-sender.jobs") >= 1, 60, "the email-sender")
        wait_for(lambda: self.consumers("notifications.email-outcomes") >= 1, 60, "the worker")

    def stop_parts(self) -> None:
        for part in self.parts:
            self.counts.exit_codes[part.name] = part.stop(timeout=60)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in self.parts)

    # -- writing -------------------------------------------------------------------------

    def write_users(self, store: SqliteStore) -> None:
        """``users`` accounts with their user.created events, spread over ``spread`` s."""
        accounts = store.collection(ACCOUNTS)
        for i in range(self.users):
            user_id = f"u{i:05d}"
            event = UserCreated(user_id=user_id, username=f"user{i}", email=f"u{i}@example.com")
            accounts.insert({"id": user_id}, events=[event.envelope(f"req-u{i}").to_dict()])
            self.user_ids.append(user_id)
            time.sleep(self.spread / self.users)

    # -- the run -------------------------------------------------------------------------

    def run(self, fault: Callable[[], None], recover: Callable[[], None]) -> Counts:
        """Traffic, ``fault()`` once the first emails are in, ``recover()``, and then wait
        until everything arrived; returns the counts."""
        self.declare_audit()
        users_store = SqliteStore(self.tmp / "users.sqlite3")
        notifications = SqliteStore(self.tmp / "notifications.sqlite3")
        reminders = NotificationsStore(notifications).collection
        with SmtpSink(self.tmp / "mail") as sink:
            try:
                self.start_parts(sink.port)
                start = utcnow() + timedelta(seconds=1)
                self.reminder_ids = seed(
                    notifications,
                    self.reminders,
                    lambda i: start + timedelta(seconds=self.spread * i / self.reminders),
                )
                writer = threading.Thread(target=self.write_users, args=(users_store,))
                writer.start()
                wait_for(lambda: len(self.mailbox.paths()) >= 100, 120, "the first emails")
                self.counts.emails_before_fault = len(self.mailbox.paths())
                self._with_fault(fault, recover, users_store, notifications)
                writer.join()
                total = self.users + self.reminders
                wait_for(lambda: len(self.mailbox.paths()) >= total, SETTLE_TIMEOUT, "emails")
                # A duplicate would make up the count while an event nacked during the
                # fault still waits out its relay lease in an outbox: wait for every email
                # by its key, and for both outboxes to be empty.
                wait_for(
                    lambda: len(self._email_keys()) >= total,
                    SETTLE_TIMEOUT,
                    "every email, each by its key",
                    interval=1.0,
                )
                wait_for(
                    lambda: users_store.outbox_pending() + notifications.outbox_pending() == 0,
                    SETTLE_TIMEOUT,
                    "empty outboxes",
                )
                wait_for(
                    lambda: reminders.count({"status": "sent"}) == self.reminders,
                    SETTLE_TIMEOUT,
                    "every reminder's outcome",
                )
                time.sleep(1.0)  # a duplicate still on its way would land now
                self.counts.reminders_sent = reminders.count({"status": "sent"})
            except BaseException:
                print(self.logs())
                raise
            finally:
                self.stop_parts()
        users_store.close()
        notifications.close()
        self._count()
        return self.counts

    def _with_fault(
        self,
        fault: Callable[[], None],
        recover: Callable[[], None],
        *stores: SqliteStore,
    ) -> None:
        """Run ``fault`` and ``recover`` in a thread while watching the outboxes fill."""
        done = threading.Event()

        def breaking() -> None:
            try:
                fault()
                recover()
            finally:
                done.set()

        thread = threading.Thread(target=breaking)
        thread.start()
        while not done.wait(0.1):
            pending = sum(store.outbox_pending() for store in stores)
            self.counts.held_in_outbox = max(self.counts.held_in_outbox, pending)
        thread.join()

    def _email_keys(self) -> Counter[str]:
        """How many emails the sink holds of each idempotency key."""
        return Counter(str(m[IDEMPOTENCY_HEADER]) for m in self.mailbox.messages())

    def _count(self) -> None:
        keys = self._email_keys()
        self.counts.emails = sum(keys.values())
        self.counts.emails_twice = sum(1 for n in keys.values() if n > 1)
        audit = self.audited()
        self.counts.audit_copies = len(audit)
        users = {m["payload"]["user_id"] for m in audit if m["type"] == "user.created"}
        jobs = {
            m["payload"]["idempotency_key"].split(":")[1]
            for m in audit
            if m["type"] == "email.send"
        }
        self.counts.published = {"user.created": len(users), "email.send": len(jobs)}
        mailed_reminders = {k.split(":")[1] for k in keys if k.startswith("reminder:")}
        self.counts.lost = {
            "user.created": len(set(self.user_ids) - users),
            "email.send": len(set(self.reminder_ids) - jobs),
            "emails": len({f"welcome:{u}" for u in self.user_ids} - set(keys))
            + len(set(self.reminder_ids) - mailed_reminders),
        }
