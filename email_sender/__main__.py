"""``python -m email_sender``: consume email jobs and deliver them until SIGTERM/SIGINT.

Settings come from the environment (SMTP_*, MAIL_FROM, AMQP_URL, DATA_DIR, RETRY_DELAYS, ...,
see :class:`eventpost.settings.Settings`). The options below choose what to consume; their
defaults are the production ones, tests and benchmarks give their own names so they do not
share queues with a running suite.

``--concurrency N`` (default 4) runs N consumers of the queue in this process, each with its
own broker connection, handler thread and reused SMTP connection, so N emails are in flight
at once: one email is a handful of round trips (SMTP's MAIL, RCPT, DATA; the confirmed
``email.sent``; the ack), and a single consumer spent most of its time waiting on them.
They share the delivery log's store. ``--batch N`` (default 10) lets each consumer take up to
N of the messages it has fetched at once: their emails go out one by one, their ``sent``
records and ``email.sent`` reports together at the end (see :mod:`email_sender.sender`).

On SIGTERM each message in hand is finished (the SMTP send is bounded by SMTP_TIMEOUT) and
settled; messages fetched ahead go back to the queue; nothing is dropped.
"""

from __future__ import annotations

import argparse
import logging

from email_sender.sender import (
    BINDINGS,
    QUEUE,
    EmailSender,
    delivery_store_factory,
    make_consumer,
)
from eventpost.consul import attach_to_worker
from eventpost.logs import configure_logging
from eventpost.messaging import EXCHANGE, Worker
from eventpost.settings import Settings

log = logging.getLogger("email_sender")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m email_sender", description=__doc__)
    parser.add_argument("--queue", default=QUEUE, help=f"queue to consume (default {QUEUE})")
    parser.add_argument(
        "--bindings",
        default=",".join(BINDINGS),
        help="comma-separated routing keys the queue is bound to",
    )
    parser.add_argument("--exchange", default=EXCHANGE, help=f"topic exchange ({EXCHANGE})")
    parser.add_argument(
        "--prefetch", type=int, default=10, help="unacked messages in flight per consumer"
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="consumers (emails in flight) (default 4)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=10,
        help="fetched messages a consumer takes at once; their sent records and reports are "
        "written together (default 10; 1: each on its own)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the email-sender; returns the exit code."""
    args = _parser().parse_args(argv)
    settings = Settings.from_env("email-sender")
    configure_logging("email-sender", settings.log_level)
    bindings = [key.strip() for key in args.bindings.split(",") if key.strip()]
    store_factory = delivery_store_factory(settings)
    senders = [
        EmailSender.from_settings(
            settings, exchange=args.exchange, store_factory=store_factory, batch_size=args.batch
        )
        for _ in range(max(1, args.concurrency))
    ]
    worker = Worker("email-sender")
    for index, sender in enumerate(senders):
        consumer = make_consumer(
            settings,
            sender,
            queue=args.queue,
            bindings=bindings,
            exchange=args.exchange,
            prefetch=args.prefetch,
        )
        worker.add_consumer(consumer, name=f"consumer:{args.queue}:{index}")
    log.info(
        "email-sender starting",
        extra={
            "queue": args.queue,
            "bindings": bindings,
            "exchange": args.exchange,
            "smtp": f"{settings.smtp_host}:{settings.smtp_port}",
            "smtp_tls": settings.smtp_tls,
            "retry_delays": list(settings.retry_delays),
            "concurrency": len(senders),
            "batch": args.batch,
        },
    )
    attach_to_worker(worker, settings, "email-sender")
    try:
        return worker.run(stop_timeout=max(60.0, settings.smtp_timeout * 3))
    finally:
        for sender in senders:
            sender.close()


if __name__ == "__main__":
    raise SystemExit(main())
