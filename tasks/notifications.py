"""Notifications tasks: perf-reminders (reminders due within one minute, end to end), and
dispatcher / notifications-worker (run one part alone).

Only invoke and the standard library are imported here (see tasks/core.py)."""

from __future__ import annotations

import shlex

from invoke import task

from tasks.core import ROOT, VENV_PY, ensure_installed, ensure_rabbitmq


@task(
    name="perf-reminders",
    help={
        "n": "reminders (default 10000)",
        "spread": "seconds over which they fall due, comma-separated runs (default 60,0)",
        "senders": "email-sender processes (default 4)",
        "dispatchers": "dispatcher processes (default 1)",
    },
)
def perf_reminders(c, n=10_000, spread="60,0", senders=4, dispatchers=1):
    """N reminders due within one minute through the real dispatcher, relay, RabbitMQ and
    email-sender into an aiosmtpd sink: time to the last email, lateness p50/p99, early /
    lost / duplicated counts. Writes perf/results/bench_reminders.json."""
    ensure_installed(c)
    ensure_rabbitmq(c)
    cmd = [
        str(VENV_PY), str(ROOT / "perf" / "bench_reminders.py"),
        "--n", str(int(n)), "--spread", spread,
        "--senders", str(int(senders)), "--dispatchers", str(int(dispatchers)),
    ]  # fmt: skip
    c.run(shlex.join(cmd), pty=False)


@task(name="dispatcher")
def dispatcher(c):
    """Run the reminder dispatcher alone in the foreground (Ctrl-C stops it)."""
    ensure_installed(c)
    c.run(f"{VENV_PY} -m services.notifications.dispatcher", pty=False)


@task(name="notifications-worker")
def notifications_worker(c):
    """Run the notifications worker (outbox relay + consumers) alone (Ctrl-C stops it)."""
    ensure_installed(c)
    c.run(f"{VENV_PY} -m services.notifications.worker", pty=False)
