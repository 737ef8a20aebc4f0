"""Processes the messaging tests start, kill and restart (``python -m`` this module).

``consumer``: a Consumer on ``--queue`` of ``--exchange`` whose handler records, in the SQLite
file ``--db``, every start (``starts``), every completion (``completions``) and the idempotent
effect (``done``, one row per envelope id); with ``--hang`` the handler never finishes (the
test kills the process). Runs in a Worker until SIGTERM.

``relay``: an OutboxRelay over the SqliteStore ``--store`` publishing to ``--exchange`` with
lease ``--lease``; with ``--hang-after-claim`` its publisher writes ``--marker`` and blocks
on the first publish (events claimed, none published), so the test can kill it right there.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import threading
import time
from pathlib import Path

from eventpost.logs import configure_logging
from eventpost.messaging import Consumer, Envelope, OutboxRelay, Publisher, Worker
from eventpost.settings import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS starts (envelope_id TEXT, pid INTEGER, attempt INTEGER);
CREATE TABLE IF NOT EXISTS completions (envelope_id TEXT, pid INTEGER);
CREATE TABLE IF NOT EXISTS done (envelope_id TEXT PRIMARY KEY);
"""


def open_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    return db


def run_consumer(args: argparse.Namespace) -> int:
    from eventpost.messaging.consumer import attempt_var

    def handle(envelope: Envelope) -> None:
        db = open_db(args.db)
        try:
            db.execute(
                "INSERT INTO starts VALUES (?, ?, ?)", (envelope.id, os.getpid(), attempt_var.get())
            )
            if args.hang:
                time.sleep(600)
            # The idempotent effect: only the first completion of an envelope id counts.
            db.execute("INSERT OR IGNORE INTO done VALUES (?)", (envelope.id,))
            db.execute("INSERT INTO completions VALUES (?, ?)", (envelope.id, os.getpid()))
        finally:
            db.close()

    consumer = Consumer(
        Settings.from_env().amqp_url,
        args.queue,
        [args.binding],
        handle,
        retry_delays=[0.2],
        exchange=args.exchange,
        connection_name=args.connection_name,
    )
    worker = Worker("test-consumer")
    worker.add_consumer(consumer)
    return worker.run()


class _HangingPublisher(Publisher):
    def __init__(self, *a: object, marker: str, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.marker = marker

    def publish(self, envelope: Envelope, routing_key: str | None = None) -> None:
        Path(self.marker).write_text(envelope.id)
        threading.Event().wait(600)

    def publish_many(self, envelopes, *, timeout=None):  # type: ignore[no-untyped-def]
        Path(self.marker).write_text(envelopes[0].id)
        threading.Event().wait(600)
        return []


def run_relay(args: argparse.Namespace) -> int:
    from eventpost.storage.sqlite import SqliteStore

    def loop(stop: threading.Event) -> None:
        store = SqliteStore(Path(args.store))
        url = Settings.from_env().amqp_url
        publisher = (
            _HangingPublisher(url, exchange=args.exchange, marker=args.marker)
            if args.hang_after_claim
            else Publisher(url, exchange=args.exchange)
        )
        try:
            OutboxRelay(store, publisher, lease_seconds=args.lease).run(stop)
        finally:
            publisher.close()
            store.close()

    worker = Worker("test-relay")
    worker.add_loop("relay", loop)
    return worker.run()


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    consumer = sub.add_parser("consumer")
    consumer.add_argument("--queue", required=True)
    consumer.add_argument("--exchange", required=True)
    consumer.add_argument("--binding", required=True)
    consumer.add_argument("--db", required=True)
    consumer.add_argument("--connection-name", required=True)
    consumer.add_argument("--hang", action="store_true")
    relay = sub.add_parser("relay")
    relay.add_argument("--store", required=True)
    relay.add_argument("--exchange", required=True)
    relay.add_argument("--lease", type=float, default=30.0)
    relay.add_argument("--hang-after-claim", action="store_true")
    relay.add_argument("--marker", default="")
    args = parser.parse_args()
    configure_logging(f"test-{args.command}", "INFO")
    return run_consumer(args) if args.command == "consumer" else run_relay(args)


if __name__ == "__main__":
    raise SystemExit(main())
