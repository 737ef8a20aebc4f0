"""Email-sender throughput: emails per second from RabbitMQ into a local aiosmtpd sink.

The yardstick, measured before and after in the same run: plain smtplib on one connection,
building each message (the same reminder email) into the same kind of sink; the ratio of each
run to it is printed (the goal: >= 0.5).

For each worker count (default 1, then 2): N ``email.send`` jobs (reminder template, with a
correlation, so each also publishes ``email.sent``) are queued first on a private exchange
and queue (the consumer's own topology), then that many ``python -m email_sender`` processes
start and drain the queue into the dev sink (which writes every message to a file). The rate
is counted from the first message stored to the last, so process start-up is left out; the
wall time including start-up is printed too.

    .venv/bin/python perf/bench_email.py [--n 2000] [--workers 1,2] [--prefetch 20]

Prints a table and writes perf/results/bench_email.json. Needs the RabbitMQ at AMQP_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from devtools.smtp_sink import FileSinkHandler, SmtpSink  # noqa: E402
from email_sender.sender import BINDINGS  # noqa: E402
from eventpost.messaging import Envelope, Publisher, declare_consumer_topology  # noqa: E402
from eventpost.messaging.topology import retry_queue_name  # noqa: E402
from eventpost.settings import Settings  # noqa: E402

RETRY_DELAYS = (5.0, 30.0)


class TimedSink(FileSinkHandler):
    """Stores like the dev sink and notes when each message was stored."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.times: list[float] = []
        self.lock = threading.Lock()

    def stored(self, path: Path) -> None:
        with self.lock:
            self.times.append(time.monotonic())


def job(run: str, i: int) -> Envelope:
    key = f"bench:{run}:{i}"
    return Envelope.new(
        "email.send",
        {
            "to": f"user{i}@example.com",
            "idempotency_key": key,
            "template": "reminder",
            "context": {
                "event": {
                    "title": f"Benchmark meetup #{i}",
                    "starts_at": "2026-12-01T20:00:00+01:00",
                    "place": {"name": "The Hall", "address": "1 Main St"},
                    "description": "Talks, pizza and <b>more</b>.",
                },
                "message": "See you there",
            },
            "correlation": {"notification_id": key, "version": 1},
        },
        request_id=f"bench-{run}",
    )


def plain_client(port: int, n: int) -> None:
    """``--plain-client PORT N``: plain smtplib on one connection, building each message
    (the same reminder email, made by email_sender.compose) and sending it to PORT."""
    import smtplib
    from datetime import UTC, datetime

    from email_sender.compose import build_email
    from email_sender.jobs import job_from_message

    run = uuid.uuid4().hex[:8]
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench") as smtp:
        for i in range(n):
            envelope = job(run, i)
            email = build_email(
                job_from_message(envelope.type, envelope.payload),
                mail_from="EventPost <noreply@eventpost.test>",
                now=datetime.now(UTC),
            )
            smtp.sendmail(email.sender, list(email.recipients), email.data)


def plain_smtplib(n: int) -> dict:
    """The yardstick: :func:`plain_client` in a process of its own (as the email-sender
    runs), into the same kind of sink, timed the same way (first to last message stored)."""
    with tempfile.TemporaryDirectory(prefix="bench-smtplib-") as tmp:
        handler = TimedSink(Path(tmp) / "mail")
        sink = SmtpSink(Path(tmp) / "mail", handler=handler).start()
        try:
            argv = [sys.executable, __file__, "--plain-client", str(sink.port), "--n", str(n)]
            subprocess.run(argv, cwd=ROOT, check=True, timeout=600)
            deadline = time.monotonic() + 60
            while len(handler.times) < n and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            sink.stop()
    first, last = handler.times[0], handler.times[-1]
    return {
        "emails": len(handler.times),
        "emails_per_second": round((len(handler.times) - 1) / (last - first), 1),
    }


def run_once(
    amqp_url: str,
    n: int,
    workers: int,
    prefetch: int,
    log_level: str,
    concurrency: int = 4,
    batch: int = 10,
) -> dict:
    run = uuid.uuid4().hex[:8]
    exchange, queue, outcomes = f"bench-email-{run}", f"bench-email-{run}", f"bench-out-{run}"
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    declare_consumer_topology(ch, queue, BINDINGS, RETRY_DELAYS, exchange=exchange)
    ch.queue_declare(outcomes, durable=True)
    for key in ("email.sent", "email.failed"):
        ch.queue_bind(outcomes, exchange, routing_key=key)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-email-") as tmp:
        tmp_path = Path(tmp)
        handler = TimedSink(tmp_path / "mail")
        sink = SmtpSink(tmp_path / "mail", handler=handler).start()
        try:
            started = time.monotonic()
            with Publisher(amqp_url, exchange=exchange) as publisher:
                for i in range(n):
                    publisher.publish(job(run, i))
            publish_s = time.monotonic() - started
            env = {
                **os.environ,
                "AMQP_URL": amqp_url,
                "DATA_DIR": str(tmp_path),
                "SMTP_HOST": "127.0.0.1",
                "SMTP_PORT": str(sink.port),
                "RETRY_DELAYS": ",".join(str(d) for d in RETRY_DELAYS),
                "LOG_LEVEL": log_level,
            }
            argv = [sys.executable, "-m", "email_sender", "--queue", queue]
            argv += ["--exchange", exchange, "--prefetch", str(prefetch)]
            argv += ["--concurrency", str(concurrency), "--batch", str(batch)]
            launched = time.monotonic()
            for w in range(workers):
                log = open(tmp_path / f"worker{w}.log", "wb")  # noqa: SIM115
                procs.append(
                    subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
            deadline = time.monotonic() + 600
            while len(handler.times) < n:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    logs = "\n".join(
                        (tmp_path / f"worker{w}.log").read_text()[-2000:] for w in range(workers)
                    )
                    raise SystemExit(f"workers stalled at {len(handler.times)}/{n}\n{logs}")
                time.sleep(0.02)
            first, last = handler.times[0], handler.times[n - 1]
            if os.environ.get("BENCH_KEEP_LOGS"):
                for w in range(workers):
                    Path(os.environ["BENCH_KEEP_LOGS"], f"worker{w}.log").write_bytes(
                        (tmp_path / f"worker{w}.log").read_bytes()
                    )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(60)
            sink.stop()
            for name in (queue, f"{queue}.parked", outcomes):
                ch.queue_delete(name)
            for delay in RETRY_DELAYS:
                ch.queue_delete(retry_queue_name(queue, delay))
            ch.exchange_delete(exchange)
            conn.close()
    return {
        "workers": workers,
        "concurrency": concurrency,
        "batch": batch,
        "emails": n,
        "emails_per_second": round((n - 1) / (last - first), 1),
        "drain_seconds": round(last - first, 3),
        "wall_seconds_with_startup": round(last - launched, 3),
        "publish_seconds": round(publish_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="jobs per run (default 2000)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    parser.add_argument(
        "--concurrency",
        default="1,4",
        help="consumers per worker to run each worker count with (default 1,4: 1 is how the "
        "email-sender ran before --concurrency, 4 its default)",
    )
    parser.add_argument(
        "--batch",
        default="10",
        help="email-sender --batch values to run each with (default 10, its default; 1: each "
        "message recorded and reported on its own, as before batches)",
    )
    parser.add_argument("--prefetch", type=int, default=20, help="consumer prefetch (20)")
    parser.add_argument("--log-level", default="INFO", help="workers' LOG_LEVEL (INFO)")
    parser.add_argument("--plain-client", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_client:
        plain_client(args.plain_client, args.n)
        return
    amqp_url = Settings.from_env().amqp_url
    results = []
    # The yardstick first and last: the machine is shared, its load moves.
    yardstick = [plain_smtplib(args.n)]
    print(f"plain smtplib  {yardstick[0]['emails_per_second']:>7.1f} emails/s", flush=True)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    runs = [
        (workers, concurrency, batch)
        for workers in [int(w) for w in args.workers.split(",") if w.strip()]
        for concurrency in levels
        for batch in batches
    ]
    for workers, concurrency, batch in runs:
        results.append(
            run_once(amqp_url, args.n, workers, args.prefetch, args.log_level, concurrency, batch)
        )
        result = results[-1]
        print(
            f"workers={result['workers']} concurrency={concurrency} batch={batch}  "
            f"emails={result['emails']}  "
            f"{result['emails_per_second']:>7.1f} emails/s  "
            f"(drain {result['drain_seconds']} s, "
            f"with start-up {result['wall_seconds_with_startup']} s; "
            f"publishing the jobs took {result['publish_seconds']} s)",
            flush=True,
        )
    yardstick.append(plain_smtplib(args.n))
    print(f"plain smtplib  {yardstick[1]['emails_per_second']:>7.1f} emails/s", flush=True)
    plain = sum(y["emails_per_second"] for y in yardstick) / len(yardstick)
    for result in results:
        result["ratio_to_plain_smtplib"] = round(result["emails_per_second"] / plain, 3)
        print(
            f"workers={result['workers']} concurrency={result['concurrency']} "
            f"batch={result['batch']}: "
            f"{result['ratio_to_plain_smtplib']:.3f} of plain "
            f"smtplib ({'PASS' if result['ratio_to_plain_smtplib'] >= 0.5 else 'FAIL'} >= 0.5)"
        )
    summary = {
        "benchmark": "email-sender: RabbitMQ -> python -m email_sender -> aiosmtpd file sink",
        "command": "python perf/bench_email.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            # The machine is shared: the figures move with what else runs.
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "prefetch": args.prefetch,
        "log_level": args.log_level,
        "plain_smtplib": yardstick,
        "results": results,
    }
    out = ROOT / "perf" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_email.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
