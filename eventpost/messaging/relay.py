"""The outbox relay: publishes the domain events a service saved with its state changes.

A service writes its events into its store's outbox in the same atomic operation as the change
(``events=`` on every write method of :mod:`eventpost.storage.port`). The relay claims a batch
with a lease, publishes the batch with confirms, in order (all written at once, the confirms
awaited together), and then marks the published ones done.

Crash windows: a relay that dies between claim and done leaves its batch leased; when the
lease runs out another relay (or the restarted one) publishes it again, so an event confirmed
by the broker just before the crash goes out twice: delivery is at-least-once, consumers
deduplicate by envelope id. Nothing is lost: an event leaves the outbox only once confirmed.

Failures, and the park rule:

- **The broker cannot be reached** (connection refused or lost, even after the publisher's one
  reconnect): the round stops, the rest of the batch stays leased, and the relay backs off
  (bounded, jittered) until the broker is back. An outage never counts against an event.
- **The broker refuses one event** (it nacks it, or the publisher cannot even frame it, e.g. a
  type longer than AMQP allows) while it takes others: the failure is counted on that event
  (:meth:`Store.outbox_failed`) and the relay goes on with the rest of the batch; the event is
  tried again when its lease ends, so it may go out after events written later. After
  ``park_after`` counted failures it is parked: logged at ERROR (type, id, attempts, reason),
  kept in the store with its reason (:meth:`Store.outbox_parked`), never claimed again. A
  refusal counts only once the broker has confirmed a message since the relay started or
  last found it unreachable, so a broker that takes nothing at all parks nothing.
- **A record that is not an envelope** fails the same way (the broker plays no part in it).
- **No queue is bound to the event's type**: with ``drop_unroutable`` (the default) the event
  is dropped with a log line (nobody subscribes to it, e.g. ``event.created`` today:
  consumers declare their durable queues when they start, so this only happens for events no
  part consumes). Without it (email jobs, whose queue the email-sender may not have declared
  yet) the round fails as in an outage and the event waits in the outbox, never parked.

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
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import pika.exceptions

from eventpost.contracts import SUBSCRIPTIONS
from eventpost.ids import worker_name
from eventpost.logs import configure_logging, request_id_var
from eventpost.loops import Backoff, run_rounds
from eventpost.messaging.envelope import Envelope, MalformedMessage
from eventpost.messaging.publisher import Publisher, PublishError, Unroutable
from eventpost.messaging.topology import EXCHANGE
from eventpost.storage.port import Store

# Named explicitly: under `python -m` this module is __main__.
log = logging.getLogger("eventpost.messaging.relay")

#: Causes of a PublishError that mean the broker could not be reached at all.
_OUTAGE = (pika.exceptions.AMQPConnectionError, OSError)
#: How much of a failure's text is kept on the outbox record.
_REASON_CHARS = 500


@dataclass(eq=False)
class OutboxRelay:
    """Moves outbox events of ``store`` to the broker through ``publisher`` (see the module
    docstring for failures and parking).

    ``owner`` names this relay in the leases (default: host, pid and a random suffix);
    ``lease_seconds``: how long claimed events stay reserved for it (and how long a refused
    event waits before its next try); ``batch``: events claimed at a time; ``poll_interval``:
    seconds between looks at an empty outbox; ``error_backoff``: (base, cap) seconds of the
    backoff while the broker or store fails; ``park_after``: counted failures after which an
    event is parked; ``drop_unroutable``: whether an event no queue is bound to is dropped
    (else it waits in the outbox).
    """

    store: Store
    publisher: Publisher
    _: KW_ONLY
    owner: str = field(default_factory=worker_name)
    lease_seconds: float = 30.0
    batch: int = 100
    poll_interval: float = 0.2
    error_backoff: tuple[float, float] = (0.5, 30.0)
    park_after: int = 5
    drop_unroutable: bool = True
    # Whether the broker confirmed a message since the relay started or last found it
    # unreachable: only then does a refusal count against an event.
    _broker_takes_messages: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.park_after < 1:
            raise ValueError("park_after must be at least 1")

    def run_once(self) -> int:
        """Claim one batch and publish it; returns how many events left the outbox.

        Publishing stops when the broker cannot be reached (raised as :class:`PublishError`;
        events published before are marked done, the rest stay leased and come back after
        the lease) and when most of the lease is used up, so no other relay gets events this
        one is still publishing. An event the broker refuses is counted and skipped."""
        return self._publish_batch()[0]

    def _publish_batch(self) -> tuple[int, int]:
        """(events that left the outbox, events claimed) of one batch: all of it written to
        the broker at once, then the confirms awaited together (one round trip, not one per
        event); the outcomes are then taken in order, as if published one by one."""
        records = self.store.outbox_claim(self.owner, self.lease_seconds, self.batch)
        done: list[str] = []
        try:
            ready: list[tuple[Mapping[str, Any], Envelope]] = []
            for record in records:
                try:
                    ready.append((record, Envelope.from_dict(record)))
                except MalformedMessage as exc:
                    self._failed(record, f"not a valid envelope: {exc}", counted=True)
            if not ready:
                return 0, len(records)
            # Confirms are awaited for most of the lease at most, so no other relay gets
            # events this one is still publishing.
            results = self.publisher.publish_many(
                [envelope for _, envelope in ready], timeout=self.lease_seconds * 0.8
            )
            stop: PublishError | None = None
            for (record, envelope), error in zip(ready, results, strict=True):
                token = request_id_var.set(envelope.request_id)
                try:
                    if self._settle(record, envelope, error):
                        done.append(record["id"])
                except PublishError as exc:
                    # The round fails, but what the broker did confirm is done with.
                    stop = stop or exc
                finally:
                    request_id_var.reset(token)
            if stop is not None:
                raise stop
        finally:
            if done:
                self.store.outbox_done(done)
        return len(done), len(records)

    def _settle(
        self, record: Mapping[str, Any], envelope: Envelope, error: PublishError | None
    ) -> bool:
        """What the publish of one event came to; whether it is done with (published or
        dropped). Raises the PublishError of an outage (or of an event that must wait)."""
        extra = {"message_type": envelope.type, "message_id": envelope.id}
        if error is None:
            self._broker_takes_messages = True
            log.info("event published", extra=extra)
            return True
        if isinstance(error, Unroutable):
            self._broker_takes_messages = True
            if not self.drop_unroutable:
                raise PublishError(
                    f"no queue takes {envelope.type!r} yet; the event stays in the outbox"
                ) from error
            # The relay declared every subscription first: nobody consumes this type.
            log.info("event published; no queue is bound to its type", extra=extra)
            return True
        if error.__cause__ is None or isinstance(error.__cause__, _OUTAGE):
            self._broker_takes_messages = False
            raise error
        self._failed(record, str(error), counted=self._broker_takes_messages)
        return False

    def _failed(self, record: Mapping[str, Any], reason: str, *, counted: bool) -> None:
        """Count a refused publish of ``record`` (when ``counted``), parking it at the limit."""
        reason = reason[:_REASON_CHARS]
        extra = {"message_type": record.get("type"), "message_id": record.get("id")}
        if not counted:
            log.warning(
                "event refused, not counted: the broker has taken no message since the relay "
                "started or last found it unreachable",
                extra={**extra, "reason": reason},
            )
            return
        attempts = self.store.outbox_failed(record["id"], reason, park_after=self.park_after)
        if attempts == 0:
            return  # no longer waiting: another relay published it after this one's lease
        extra.update(attempts=attempts, reason=reason)
        if attempts >= self.park_after:
            log.error("event parked in the outbox after failed publishes", extra=extra)
        else:
            log.warning("event not published; tried again after its lease", extra=extra)

    def _round(self) -> float:
        """One batch; how long to wait before the next (none while the outbox is full)."""
        _, claimed = self._publish_batch()
        if claimed >= self.batch:
            return 0.0
        self.publisher.keepalive()
        return self.poll_interval

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Relay until ``stop`` is set: go straight on while the outbox is full, else wait
        ``poll_interval`` or until ``wake`` is set (a caller that just wrote events hurries
        the relay with it); back off (bounded, jittered, ignoring ``wake``) on errors."""
        log.info("outbox relay started", extra={"owner": self.owner})
        run_rounds(
            self._round,
            stop,
            what="outbox relay",
            logger=log,
            backoff=Backoff(*self.error_backoff),
            wake=wake,
        )
        log.info("outbox relay stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eventpost.messaging.relay --service NAME``: relay NAME's outbox until
    SIGTERM or SIGINT; returns the exit code."""
    from eventpost.consul import attach_to_worker
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
            queue_type=settings.amqp_queue_type,
        )
        try:
            OutboxRelay(store, publisher).run(stop)
        finally:
            publisher.close()
            store.close()

    worker = Worker(f"{args.service}-relay")
    worker.add_loop("relay", relay_loop)
    attach_to_worker(worker, settings, f"{args.service}-relay")
    return worker.run()


if __name__ == "__main__":
    raise SystemExit(main())
