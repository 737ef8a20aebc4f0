"""The notifications service's background process: ``python -m services.notifications.worker``.

It runs, each in a thread of its own (see :class:`eventpost.messaging.Worker`):

- the outbox relay of the notifications store (email jobs of the dispatcher and of
  cancellations; it also takes over jobs a crashed dispatcher left behind),
- a consumer per queue of :data:`services.notifications.consumers.QUEUES`:
  ``notifications.email-outcomes`` (``email.sent``, ``email.failed``),
  ``notifications.event-changes`` (``event.updated``, ``event.deleted``) and
  ``notifications.user-deleted`` (``user.deleted``).

SIGTERM or SIGINT stops it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
from collections.abc import Sequence

from eventpost.consul import attach_to_worker
from eventpost.contracts import SUBSCRIPTIONS
from eventpost.logs import configure_logging
from eventpost.messaging import EXCHANGE, Consumer, Envelope, OutboxRelay, Publisher, Worker
from eventpost.settings import Settings
from eventpost.storage import Store, open_store
from services.notifications.consumers import QUEUES, NotificationHandlers

log = logging.getLogger(__name__)


def _on_exhausted(envelope: Envelope, error: BaseException) -> None:
    log.error(
        "message given up and parked",
        extra={"message_type": envelope.type, "message_id": envelope.id, "error": repr(error)},
    )


def build_worker(
    settings: Settings,
    store: Store,
    *,
    exchange: str = EXCHANGE,
    queue_prefix: str = "notifications",
    relay_lease: float = 10.0,
) -> Worker:
    """The worker with its relay and consumers over ``store`` (tests pass their own exchange
    and prefix). One store serves every thread: the SQLite adapter keeps a connection per
    thread and MongoDB's client is thread-safe, so the process holds one MongoClient."""
    worker = Worker("notifications-worker")
    name = f"notifications-worker@{socket.gethostname()}:{os.getpid()}"
    handlers = NotificationHandlers(store)

    def relay_loop(stop: threading.Event) -> None:
        publisher = Publisher(
            settings.amqp_url,
            exchange=exchange,
            connection_name=f"eventpost-{name}:relay",
            subscriptions=SUBSCRIPTIONS if exchange == EXCHANGE else None,
            queue_type=settings.amqp_queue_type,
        )
        try:
            # an email job waits for the email-sender's queue: never dropped as unroutable
            OutboxRelay(store, publisher, lease_seconds=relay_lease, drop_unroutable=False).run(
                stop
            )
        finally:
            publisher.close()

    worker.add_loop("relay", relay_loop)
    for queue, bindings in QUEUES.items():
        worker.add_consumer(
            Consumer(
                settings.amqp_url,
                f"{queue_prefix}.{queue}",
                bindings,
                handlers.handler_for(queue),
                retry_delays=settings.retry_delays,
                prefetch=20,
                on_exhausted=_on_exhausted,
                exchange=exchange,
                queue_type=settings.amqp_queue_type,
            )
        )
    return worker


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker until SIGTERM/SIGINT; returns the exit code."""
    parser = argparse.ArgumentParser(description="Notifications relay and consumers.")
    parser.add_argument("--exchange", default=EXCHANGE, help="topic exchange (tests)")
    parser.add_argument("--queue-prefix", default="notifications", help="queue names (tests)")
    parser.add_argument("--relay-lease", type=float, default=10.0, help="seconds")
    args = parser.parse_args(argv)
    settings = Settings.from_env("notifications")
    configure_logging("notifications-worker", settings.log_level)
    store = open_store(settings, "notifications")
    try:
        worker = build_worker(
            settings,
            store,
            exchange=args.exchange,
            queue_prefix=args.queue_prefix,
            relay_lease=args.relay_lease,
        )
        attach_to_worker(worker, settings, "notifications-worker")
        return worker.run()
    finally:
        store.close()


if __name__ == "__main__":
    raise SystemExit(main())
