"""``python -m email_sender``: consume email jobs and deliver them until SIGTERM/SIGINT.

Settings come from the environment (SMTP_*, MAIL_FROM, AMQP_URL, DATA_DIR, RETRY_DELAYS, ...,
see :class:`eventpost.settings.Settings`). The options below choose what to consume; their
defaults are the production ones, tests and benchmarks give their own names so they do not
share queues with a running suite.

On SIGTERM the message in hand is finished (the SMTP send is bounded by SMTP_TIMEOUT) and
settled; messages fetched ahead go back to the queue; nothing is dropped.
"""

from __future__ import annotations

import argparse
import logging

from email_sender.sender import BINDINGS, QUEUE, EmailSender, make_consumer
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
    parser.add_argument("--prefetch", type=int, default=10, help="unacked messages in flight")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the email-sender; returns the exit code."""
    args = _parser().parse_args(argv)
    settings = Settings.from_env("email-sender")
    configure_logging("email-sender", settings.log_level)
    bindings = [key.strip() for key in args.bindings.split(",") if key.strip()]
    sender = EmailSender.from_settings(settings, exchange=args.exchange)
    consumer = make_consumer(
        settings,
        sender,
        queue=args.queue,
        bindings=bindings,
        exchange=args.exchange,
        prefetch=args.prefetch,
    )
    log.info(
        "email-sender starting",
        extra={
            "queue": args.queue,
            "bindings": bindings,
            "exchange": args.exchange,
            "smtp": f"{settings.smtp_host}:{settings.smtp_port}",
            "smtp_tls": settings.smtp_tls,
            "retry_delays": list(settings.retry_delays),
        },
    )
    worker = Worker("email-sender")
    worker.add_consumer(consumer)
    attach_to_worker(worker, settings, "email-sender")
    try:
        return worker.run(stop_timeout=max(60.0, settings.smtp_timeout * 3))
    finally:
        sender.close()


if __name__ == "__main__":
    raise SystemExit(main())
