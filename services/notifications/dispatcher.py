"""The reminder dispatcher: due reminders become email jobs, each exactly once in the normal
case and at least once when something crashes. ``python -m services.notifications.dispatcher``.

Every ``DISPATCH_INTERVAL`` (sooner when the next reminder falls due before that):

1. **Claim.** In one store transaction, up to ``batch`` reminders that are ``scheduled``, due
   (``send_at <= now``) and not leased (``lease_until < now``) are leased to this dispatcher
   (``lease_owner`` = its unique owner id, ``lease_until`` = now + lease) with
   :meth:`Collection.claim`, which never gives one reminder to two claimers. Several
   dispatchers can run side by side; a crashed one's claims become claimable again when the
   lease ends. A reminder is never claimed before its ``send_at``.
2. **Hand over.** For each claimed reminder, ONE conditional store write (expected version =
   the version the claim returned) moves it to ``sending`` and puts its ``email.send`` job
   into the service's outbox (idempotency key ``reminder:<id>:v<version>``, correlation
   ``{notification_id, version}``, the request ID of the request that last set it). Any other
   write to a reminder (PATCH, delete, cancellation by ``event.deleted``, a move by
   ``event.updated``, another dispatcher's claim after the lease ended) bumps its version, so
   the write of a dispatcher whose claim went stale fails and changes nothing: a cancelled,
   deleted or rescheduled reminder is not sent.
3. **Publish.** An :class:`OutboxRelay` in a second thread of the dispatcher process, woken
   after every round that handed jobs over, publishes them with publisher confirms and
   forgets them once confirmed (publishing never holds up claiming). The notifications
   worker runs another relay over the same outbox, so jobs of a dispatcher that died after
   step 2 still go out.

Crash windows: dying after 1 leaves claims that return after the lease (the reminder is late
by up to the lease, never lost). Dying between 2 and 3 is covered by the outbox. Dying after a
publish was confirmed but before the outbox record was marked done publishes that job again
(the other relay, after the relay lease): the copy carries the same idempotency key and the
email-sender drops it. The window left is in the email-sender: a crash after the SMTP server
accepted a mail but before the key was recorded can send it twice (at-least-once delivery).

A reminder of an event that has a tombstone (deleted; see :mod:`services.notifications.consumers`)
is never sent: step 2 cancels it instead, with the owner's ``event_cancelled`` email.

A broker that cannot be reached stops only step 3: reminders keep moving to ``sending`` with
their jobs safe in the outbox, published when the broker is back.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from eventpost import contracts
from eventpost.consul import attach_to_worker
from eventpost.ids import worker_name
from eventpost.live_settings import LiveSettings
from eventpost.logs import configure_logging
from eventpost.loops import Backoff, run_rounds
from eventpost.messaging import EXCHANGE, OutboxRelay, Publisher
from eventpost.messaging.worker import Worker
from eventpost.settings import Settings
from eventpost.storage import StorageError, Store, open_store
from eventpost.timeutil import Clock, format_time, parse_time, utcnow
from services.notifications import domain
from services.notifications.consumers import cancellation
from services.notifications.store import Decision, NotificationsStore

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_LEASE_SECONDS = 10.0
DEFAULT_BATCH = 100
DEFAULT_RELAY_LEASE_SECONDS = 10.0


def new_owner() -> str:
    """A dispatcher's unique lease owner: ``dispatcher@host:pid:random``."""
    return worker_name("dispatcher")


class ReminderDispatcher:
    """Claims due reminders and hands each to the outbox as an email job (see the module
    docstring). ``on_handed_over`` is called after a round that put jobs into the outbox
    (the process's relay thread is woken with it)."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = utcnow,
        owner: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        batch: int = DEFAULT_BATCH,
        interval: float = 1.0,
        on_handed_over: Callable[[], None] | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.store = store
        self.reminders = NotificationsStore(store)
        self.clock = clock
        self.owner = owner or new_owner()
        self.lease = timedelta(seconds=lease_seconds)
        self.batch = batch
        self.interval = interval
        self.on_handed_over = on_handed_over
        self._batch_writes = True
        self._wake = threading.Event()  # cuts the wait short when the interval changes

    # -- one round -----------------------------------------------------------------------

    def claim(self) -> list[dict[str, Any]]:
        """Lease up to ``batch`` due reminders to this dispatcher."""
        now = self.clock()
        now_s = format_time(now)
        until = format_time(now + self.lease)

        def claim_batch() -> list[dict[str, Any]]:
            claimed: list[dict[str, Any]] = []
            while len(claimed) < self.batch:
                doc = self.reminders.claim_due(now=now_s, owner=self.owner, lease_until=until)
                if doc is None:
                    break
                claimed.append(doc)
            return claimed

        claimed = self._batched(claim_batch)
        if claimed:
            log.info("claimed due reminders", extra={"count": len(claimed), "owner": self.owner})
        return claimed

    def hand_over(self, claimed: Sequence[dict[str, Any]]) -> int:
        """Move each claimed reminder to ``sending`` with its job in the outbox, if the claim
        is still this dispatcher's; returns how many were handed over."""
        # Each write is a savepoint of its own, so a stale claim (VersionConflict) leaves the
        # others of the batch in.
        return self._batched(lambda: sum(1 for doc in claimed if self._hand_over_one(doc)))

    def _batched(self, work: Callable[[], _T]) -> _T:
        """``work`` in one store transaction (one commit for a whole batch: what makes the
        embedded store fast). Each single write is atomic by itself, so when a transaction
        fails as a whole (e.g. a MongoDB write conflict between two dispatchers' transactions,
        rolled back entirely) the work is done again write by write, and from then on always
        so."""
        if self._batch_writes:
            try:
                with self.reminders.transaction():
                    return work()
            except StorageError as exc:
                self._batch_writes = False
                log.warning(
                    "a batched transaction failed; writing one reminder at a time from now on",
                    extra={"error": repr(exc)},
                )
        return work()

    def _hand_over_one(self, claimed: dict[str, Any]) -> bool:
        if self.reminders.tombstone_of(claimed["event_id"]) is not None:
            self._cancel_deleted(claimed)
            return False
        now = self.clock()

        def decide(doc: dict[str, Any] | None) -> Decision:
            if doc is None or doc["version"] != claimed["version"]:
                return None  # changed since the claim: the claim went stale
            changes = domain.claimed_for_sending(doc, owner=self.owner, now=now)
            if changes is None:
                return None
            job = domain.reminder_job(doc, domain.sending_version(doc))
            return changes, [job.envelope(doc.get("request_id"), clock=self.clock).to_dict()]

        written = self.reminders.change(claimed["id"], decide, current=claimed)
        if written is None:
            log.info(
                "reminder not ours or not due, or changed since it was claimed; not sent by "
                "this claim",
                extra={"notification_id": claimed["id"]},
            )
            return False
        stored, _ = written
        log.info(
            "reminder handed to the outbox",
            extra={
                "notification_id": stored["id"],
                "send_at": stored["send_at"],
                "idempotency_key": domain.reminder_key(stored["id"], stored["version"]),
                "request_id": stored.get("request_id"),
            },
        )
        return True

    def _cancel_deleted(self, claimed: dict[str, Any]) -> None:
        """A claimed reminder whose event is deleted: cancelled, its owner told by email."""
        decide = cancellation(None, claimed.get("request_id"), self.clock)
        if self.reminders.change(claimed["id"], decide, current=claimed) is not None:
            log.info(
                "reminder of a deleted event cancelled, not sent",
                extra={"notification_id": claimed["id"], "event_id": claimed["event_id"]},
            )

    def run_once(self) -> int:
        """Claim and hand over every due reminder (batch after batch) and publish them;
        returns how many were handed over."""
        total = 0
        while True:
            claimed = self.claim()
            handed = self.hand_over(claimed)
            if handed and self.on_handed_over is not None:
                self.on_handed_over()
            total += handed
            if len(claimed) < self.batch:
                return total

    def next_wait(self) -> float:
        """Seconds until the next round: the interval, or less when a scheduled reminder
        falls due sooner."""
        now = self.clock()
        upcoming = self.reminders.next_scheduled_after(format_time(now))
        if upcoming is None:
            return self.interval
        until = (parse_time(upcoming["send_at"]) - now).total_seconds()
        return max(0.0, min(self.interval, until))

    def dispatch_round(self) -> float:
        """One round of :meth:`run`: everything due handed over; returns :meth:`next_wait`."""
        self.run_once()
        return self.next_wait()

    def set_interval(self, seconds: float) -> None:
        """A new ``DISPATCH_INTERVAL`` (Consul KV), in force from now: the wait in progress
        ends and the next round waits the new interval."""
        self.interval = seconds
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Dispatch until ``stop`` is set; errors (a locked or lost store) are logged and
        retried with backoff."""
        log.info(
            "dispatcher started",
            extra={"owner": self.owner, "interval": self.interval, "batch": self.batch},
        )
        run_rounds(
            self.dispatch_round,
            stop,
            what="dispatch round",
            logger=log,
            backoff=Backoff(0.2, 10.0),
            wake=self._wake,
        )
        log.info("dispatcher stopped", extra={"owner": self.owner})


def main(
    argv: Sequence[str] | None = None,
    *,
    dispatcher_type: type[ReminderDispatcher] = ReminderDispatcher,
) -> int:
    """``python -m services.notifications.dispatcher``: dispatch due reminders every
    ``DISPATCH_INTERVAL`` until SIGTERM/SIGINT (with a ``dispatcher_type`` of the caller's
    choosing: tests run a subclass); returns the exit code."""
    parser = argparse.ArgumentParser(description="Send due reminders as email jobs.")
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE_SECONDS, help="seconds")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument(
        "--relay-lease", type=float, default=DEFAULT_RELAY_LEASE_SECONDS, help="seconds"
    )
    parser.add_argument("--exchange", default=EXCHANGE, help="topic exchange (tests)")
    args = parser.parse_args(argv)
    settings = Settings.from_env("notifications")
    configure_logging("dispatcher", settings.log_level)
    owner = new_owner()

    # Set by the dispatcher after a round that handed jobs over: the relay publishes them now.
    jobs_handed_over = threading.Event()
    # One store for both loops: the SQLite adapter keeps a connection per thread and
    # MongoDB's client is thread-safe. Publishers (pika) stay in their own thread.
    store = open_store(settings, "notifications")

    dispatcher = dispatcher_type(
        store,
        owner=owner,
        lease_seconds=args.lease,
        batch=args.batch,
        interval=settings.dispatch_interval,
        on_handed_over=jobs_handed_over.set,
    )

    def relay_loop(stop: threading.Event) -> None:
        publisher = Publisher(
            settings.amqp_url,
            exchange=args.exchange,
            connection_name=f"eventpost-{owner}",
            subscriptions=contracts.SUBSCRIPTIONS if args.exchange == EXCHANGE else None,
            queue_type=settings.amqp_queue_type,
        )
        relay = OutboxRelay(
            store,
            publisher,
            owner=f"{owner}:relay",
            lease_seconds=args.relay_lease,
            poll_interval=0.5,
            error_backoff=(0.5, 10.0),
            drop_unroutable=False,  # a job waits for the email-sender's queue, never dropped
        )
        try:
            relay.run(stop, wake=jobs_handed_over)
        finally:
            publisher.close()

    worker = Worker("dispatcher")
    worker.add_loop("dispatcher", dispatcher.run)
    worker.add_loop("relay", relay_loop)
    attach_to_worker(worker, settings, "dispatcher")
    if settings.consul_http_addr:  # DISPATCH_INTERVAL follows Consul KV while running
        live = LiveSettings(
            settings,
            {"dispatch_interval": dispatcher.set_interval},
            env=os.environ,
        )
        worker.add_loop("consul-settings", live.run)
    try:
        return worker.run()
    finally:
        store.close()


if __name__ == "__main__":
    raise SystemExit(main())
