"""Reminders on time at volume: N reminders due within the same minute, delivered by the real
processes to a local aiosmtpd sink.

    .venv/bin/python perf/bench_reminders.py [--n 10000] [--spread 60] [--dispatchers 1]
                                             [--senders 2] [--lead 10]

What runs: ``python -m services.notifications.dispatcher`` (claims, outbox, relay with
confirms), ``python -m services.notifications.worker`` (the second relay and the consumers
that record ``email.sent``), ``python -m email_sender`` (``--senders`` processes) and an
aiosmtpd sink in this process that stores every message as a file (the dev sink) and notes
when it arrived and its idempotency key. Everything uses a private exchange and queues
(deleted at the end) and a temporary DATA_DIR with the embedded SQLite stores (synchronous
FULL, as in production), on the RabbitMQ at AMQP_URL.

The reminders are written straight into the notifications store, each due at a random time in
``[T0, T0 + spread)`` (``--spread 0``: all due at T0, a burst), T0 being ``--lead`` seconds
after the processes are ready. Reported: the time from T0 until the last email arrived,
lateness (arrival - send_at) p50/p99/max, the dispatcher's own share of it (hand-over to
the outbox - send_at, p50/p99), and counts of early (arrived before send_at), lost
(never arrived) and duplicated (arrived more than once) emails; the reminders' final
statuses. Goal: everything within 60 s, 0 early, 0 lost, 0 duplicated.

Prints a summary and writes perf/results/bench_reminders.json (one entry per spread run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402
import pika.exceptions  # noqa: E402

from devtools.smtp_sink import FileSinkHandler, SmtpSink  # noqa: E402
from eventpost.messaging.topology import retry_queue_name  # noqa: E402
from eventpost.settings import Settings  # noqa: E402
from eventpost.storage.sqlite import SqliteStore  # noqa: E402
from eventpost.timeutil import format_time, parse_time  # noqa: E402
from services.notifications import domain  # noqa: E402
from services.notifications.store import NotificationsStore  # noqa: E402

KEY = re.compile(rb"^X-EventPost-Idempotency-Key: *(\S+)\r?$", re.MULTILINE)
RETRY_DELAYS = "2,5,10"
EVENT = {
    "id": "bench-event",
    "title": "Benchmark meetup",
    "starts_at": "2031-06-01T19:00:00Z",
    "place": {"name": "The Hall", "address": "1 Main St"},
    "updated_at": "2026-01-01T00:00:00.000000Z",
}


class TimedSink(FileSinkHandler):
    """The dev sink's handler, noting (arrival time, idempotency key) of every message."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.arrivals: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        arrived = time.time()
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode()
        found = KEY.search(content)
        with self.lock:
            self.arrivals.append((arrived, found.group(1).decode() if found else "?"))
        return await super().handle_DATA(server, session, envelope)

    def stored(self, path: Path) -> None:  # no log line per message
        pass


def seed(store: SqliteStore, n: int, t0: datetime, spread: float, rng: random.Random) -> dict:
    """n reminders due in [t0, t0 + spread); returns {id: send_at (epoch seconds)}."""
    coll = NotificationsStore(store).collection
    due = {}
    with store.transaction():
        for i in range(n):
            at = t0 + timedelta(seconds=rng.random() * spread)
            doc = domain.new_reminder(
                reminder_id=f"b{i:06d}",
                owner=f"user{i % 500}",
                event_id=EVENT["id"],
                event=EVENT,
                user={"email": f"user{i}@example.com"},
                send_at=format_time(at),
                before=None,
                email=None,
                subject=None,
                message="Benchmark reminder",
                now=t0 - timedelta(hours=1),
                request_id=f"bench-{i}",
            )
            coll.insert(doc)
            due[doc["id"]] = parse_time(doc["send_at"]).timestamp()
    return due


def consumers(channel_factory, queue: str) -> int:
    ch = channel_factory()
    try:
        return ch.queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if ch.is_open:
            ch.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run_once(args: argparse.Namespace, amqp_url: str, spread: float) -> dict:
    run = uuid.uuid4().hex[:8]
    exchange = f"bench-reminders-{run}"
    sender_queue = f"bench-reminders-{run}.email-sender"
    prefix = f"bench-reminders-{run}.notifications"
    ours = [f"{prefix}.{q}" for q in ("email-outcomes", "event-changes", "user-deleted")]
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-reminders-") as tmp:
        data = Path(tmp)
        handler = TimedSink(data / "mail")
        sink = SmtpSink(data / "mail", handler=handler).start()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AMQP_URL": amqp_url,
            "DATA_DIR": str(data),
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(sink.port),
            "RETRY_DELAYS": RETRY_DELAYS,
            "DISPATCH_INTERVAL": str(args.interval),
            "LOG_LEVEL": args.log_level,
        }

        def start(name: str, argv: list[str], part_env: dict[str, str] | None = None) -> None:
            log = open(data / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(
                (
                    name,
                    subprocess.Popen(
                        [sys.executable, *argv],
                        cwd=ROOT,
                        env=part_env or env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                )
            )

        store = SqliteStore(data / "notifications.sqlite3")
        try:
            for s in range(args.senders):
                start(
                    f"email-sender-{s}",
                    ["-m", "email_sender", "--exchange", exchange, "--queue", sender_queue,
                     "--bindings", "email.send", "--prefetch", str(args.prefetch),
                     "--concurrency", str(args.concurrency), "--batch", str(args.sender_batch)],
                    {**env, "DATA_DIR": str(data / "sender")},
                )  # fmt: skip
            start(
                "worker",
                ["-m", "services.notifications.worker", "--exchange", exchange,
                 "--queue-prefix", prefix],
            )  # fmt: skip
            for d in range(args.dispatchers):
                start(
                    f"dispatcher-{d}",
                    ["-m", "services.notifications.dispatcher", "--exchange", exchange,
                     "--batch", str(args.batch)],
                )  # fmt: skip
            deadline = time.monotonic() + 60
            while (
                consumers(conn.channel, sender_queue) < args.senders
                or consumers(conn.channel, ours[0]) < 1
            ):
                if time.monotonic() > deadline:
                    raise SystemExit("the processes did not start; see the logs in " + tmp)
                time.sleep(0.1)
            t0 = datetime.now(UTC) + timedelta(seconds=args.lead)
            seeded = time.monotonic()
            due = seed(store, args.n, t0, spread, rng)
            seed_s = time.monotonic() - seeded
            last_due = max(due.values())
            give_up = last_due + args.timeout
            while time.time() < give_up:
                with handler.lock:
                    arrived_keys = {key for _, key in handler.arrivals}
                if len(arrived_keys) >= args.n:
                    break
                time.sleep(0.1)
            time.sleep(args.settle)  # a duplicate still on its way lands now
            with handler.lock:
                arrivals = list(handler.arrivals)
            wait_outcomes = time.monotonic() + 30
            reminders = NotificationsStore(store)
            coll = reminders.collection
            while coll.count({"status": "sent"}) < args.n and time.monotonic() < wait_outcomes:
                time.sleep(0.2)
            statuses = {s: coll.count({"status": s}) for s in domain.STATUSES}
            handed = [
                parse_time(d["dispatched_at"]).timestamp() - due[d["id"]]
                for d in reminders.iter_matching({})
                if d.get("dispatched_at")
            ]
        finally:
            for _, p in procs:
                p.terminate()
            exit_codes = {}
            for name, p in procs:
                try:
                    exit_codes[name] = p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    exit_codes[name] = p.wait(10)
            sink.stop()
            store.close()
            ch = conn.channel()
            for queue in [sender_queue, *ours]:
                for name in [queue, f"{queue}.parked"] + [
                    retry_queue_name(queue, float(d)) for d in RETRY_DELAYS.split(",")
                ]:
                    ch.queue_delete(name)
            ch.exchange_delete(exchange)
            conn.close()

    t0s = t0.timestamp()
    first_arrival: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for arrived, key in arrivals:
        counts[key] += 1
        first_arrival.setdefault(key, arrived)
    ids = {key: key.split(":")[1] for key in counts if key.startswith("reminder:")}
    lateness = [first_arrival[k] - due[i] for k, i in ids.items() if i in due]
    early = sum(1 for value in lateness if value < 0)
    delivered = {i for i in ids.values() if i in due}
    last_arrival = max((a for a, _ in arrivals), default=float("nan"))
    return {
        "reminders": args.n,
        "spread_seconds": spread,
        "dispatchers": args.dispatchers,
        "email_senders": args.senders,
        "email_sender_concurrency": args.concurrency,
        "email_sender_batch": args.sender_batch,
        "dispatch_interval": args.interval,
        "seed_seconds": round(seed_s, 2),
        "last_arrival_after_t0_seconds": round(last_arrival - t0s, 2),
        "last_arrival_after_last_due_seconds": round(last_arrival - last_due, 2),
        "lateness_p50_ms": round(statistics.median(lateness) * 1000, 1) if lateness else None,
        "lateness_p99_ms": round(percentile(lateness, 0.99) * 1000, 1) if lateness else None,
        "lateness_max_ms": round(max(lateness) * 1000, 1) if lateness else None,
        "dispatch_lateness_p50_ms": round(statistics.median(handed) * 1000, 1) if handed else None,
        "dispatch_lateness_p99_ms": round(percentile(handed, 0.99) * 1000, 1) if handed else None,
        "early": early,
        "lost": args.n - len(delivered),
        "duplicated": sum(1 for n in counts.values() if n > 1),
        "emails_received": len(arrivals),
        "statuses": statuses,
        "exit_codes": exit_codes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="reminders (default 10000)")
    parser.add_argument(
        "--spread",
        default="60,0",
        help="comma-separated: seconds over which they fall due (default 60,0: one run spread "
        "over a minute, one burst all due at the same instant)",
    )
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument("--senders", type=int, default=4, help="email-sender processes")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="consumers per email-sender (its default 4)"
    )
    parser.add_argument(
        "--sender-batch", type=int, default=10, help="email-sender --batch (its default 10)"
    )
    parser.add_argument("--batch", type=int, default=100, help="dispatcher claim batch")
    parser.add_argument("--prefetch", type=int, default=50, help="email-sender prefetch")
    parser.add_argument("--interval", type=float, default=1.0, help="DISPATCH_INTERVAL")
    parser.add_argument("--lead", type=float, default=10.0, help="seconds before T0")
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after the last due")
    parser.add_argument("--settle", type=float, default=3.0, help="wait for late duplicates")
    parser.add_argument("--log-level", default="INFO", help="the processes' LOG_LEVEL")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    amqp_url = Settings.from_env().amqp_url
    results = []
    for spread in [float(s) for s in args.spread.split(",") if s.strip()]:
        result = run_once(args, amqp_url, spread)
        results.append(result)
        print(
            f"n={result['reminders']} spread={spread:g}s dispatchers={args.dispatchers} "
            f"senders={args.senders}: last email {result['last_arrival_after_t0_seconds']} s "
            f"after T0 ({result['last_arrival_after_last_due_seconds']} s after the last due); "
            f"lateness p50 {result['lateness_p50_ms']} ms, p99 {result['lateness_p99_ms']} ms, "
            f"max {result['lateness_max_ms']} ms (handed to the outbox: p50 "
            f"{result['dispatch_lateness_p50_ms']} ms, p99 {result['dispatch_lateness_p99_ms']} "
            f"ms); early {result['early']}, "
            f"lost {result['lost']}, duplicated {result['duplicated']}; "
            f"statuses {result['statuses']}",
            flush=True,
        )
    summary = {
        "benchmark": "reminders due within one minute -> dispatcher -> RabbitMQ -> "
        "email-sender -> aiosmtpd sink",
        "command": "python perf/bench_reminders.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    out = ROOT / "perf" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_reminders.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
