"""The outbox relay: publishes the domain events a service saved with its state changes.

A service writes its events into its store's outbox in the same atomic operation as the change
(``events=`` on every write method of :mod:`eventpost.storage.port`). The relay claims a batch
with a lease, publishes each event with confirms, in order, and then marks the published ones
done. If the relay dies between claim and done, the lease runs out and another relay (or the
restarted one) publishes them again: delivery is at-least-once, consumers deduplicate by
envelope id.

Run one for a service's store with ``python -m eventpost.messaging.relay --service users``
(SIGTERM or SIGINT stops it cleanly), or in a worker process through
:class:`eventpost.messaging.worker.Worker`.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence

from eventpost.contracts import SUBSCRIPTIONS
from eventpost.logs import configure_logging, request_id_var
from eventpost.messaging.consumer import backoff_delay
from eventpost.messaging.envelope import Envelope, MalformedMessage
from eventpost.messaging.publisher import Publisher, Unroutable
from eventpost.messaging.topology import EXCHANGE
from eventpost.storage.port import Store

# Named explicitly: under `python -m` this module is __main__.
log = logging.getLogger("eventpost.messaging.relay")


class OutboxRelay:
    """Moves outbox events of ``store`` to the broker through ``publisher``.

    ``owner`` names this relay in the leases (default: host, pid and a random suffix);
    ``lease_seconds``: how long claimed events stay reserved for it; ``batch``: events claimed
    at a time; ``poll_interval``: seconds between looks at an empty outbox.

    An event whose type no queue is bound to is dropped with a log line (nobody subscribes to
    it, e.g. ``event.created`` today): consumers declare their queues when they start, and the
    queues are durable, so this only happens for events no part consumes.
    """

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        *,
        owner: str | None = None,
        lease_seconds: float = 30.0,
        batch: int = 100,
        poll_interval: float = 0.2,
        error_backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.poll_interval = poll_interval
        self.error_backoff = error_backoff
        self._last_claimed = 0

    def run_once(self) -> int:
        """Claim one batch and publish it; returns how many events left the outbox.

        Publishing stops at the first failure (raised as :class:`PublishError`); events
        published before it are marked done, the rest stay leased and come back after the
        lease. It also stops when most of the lease is used up, so no other relay gets
        events this one is still publishing."""
        started = time.monotonic()
        records = self.store.outbox_claim(self.owner, self.lease_seconds, self.batch)
        self._last_claimed = len(records)
        done: list[str] = []
        try:
            for record in records:
                if time.monotonic() - started > self.lease_seconds * 0.8:
                    log.warning("lease nearly over; leaving the rest of the batch")
                    break
                try:
                    envelope = Envelope.from_dict(record)
                except MalformedMessage as exc:
                    log.error(
                        "outbox record is not a valid envelope; left in the outbox",
                        extra={"event_id": record.get("id"), "error": str(exc)},
                    )
                    continue
                self._publish(envelope)
                done.append(envelope.id)
        finally:
            if done:
                self.store.outbox_done(done)
        return len(done)

    def _publish(self, envelope: Envelope) -> None:
        token = request_id_var.set(envelope.request_id)
        try:
            extra = {"message_type": envelope.type, "message_id": envelope.id}
            try:
                self.publisher.publish(envelope)
            except Unroutable:
                # The relay declared every subscription first: nobody consumes this type.
                log.info("event published; no queue is bound to its type", extra=extra)
                return
            log.info("event published", extra=extra)
        finally:
            request_id_var.reset(token)

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set: poll every ``poll_interval`` while the outbox is
        empty, go straight on while it is full, back off (bounded, jittered) on errors."""
        log.info("outbox relay started", extra={"owner": self.owner})
        failures = 0
        while not stop.is_set():
            try:
                self.run_once()
                failures = 0
            except Exception as exc:
                delay = backoff_delay(failures, *self.error_backoff)
                failures += 1
                log.warning(
                    "outbox relay failed; retrying",
                    exc_info=True,
                    extra={"error": repr(exc), "retry_in_seconds": round(delay, 2)},
                )
                stop.wait(delay)
                continue
            if self._last_claimed < self.batch:
                self.publisher.keepalive()
                stop.wait(self.poll_interval)
        log.info("outbox relay stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eventpost.messaging.relay --service NAME``: relay NAME's outbox until
    SIGTERM or SIGINT; returns the exit code."""
    from eventpost.messaging.worker import Worker
    from eventpost.settings import Settings
    from eventpost.storage import open_store

    parser = argparse.ArgumentParser(description="Publish a service's outbox to RabbitMQ.")
    parser.add_argument("--service", required=True, help="whose store: users, events, ...")
    parser.add_argument("--exchange", default=EXCHANGE, help="exchange to publish on")
    args = parser.parse_args(argv)
    settings = Settings.from_env(args.service)
    configure_logging(f"{args.service}-relay", settings.log_level)

    def relay_loop(stop: threading.Event) -> None:
        # Store and publisher are opened in the relay's own thread: both may be thread-bound.
        store = open_store(settings)
        publisher = Publisher(
            settings.amqp_url,
            exchange=args.exchange,
            connection_name=f"eventpost-{args.service}-relay@{socket.gethostname()}:{os.getpid()}",
            subscriptions=SUBSCRIPTIONS if args.exchange == EXCHANGE else None,
        )
        try:
            OutboxRelay(store, publisher).run(stop)
        finally:
            publisher.close()
            store.close()

    worker = Worker(f"{args.service}-relay")
    worker.add_loop("relay", relay_loop)
    return worker.run()


if __name__ == "__main__":
    raise SystemExit(main())
