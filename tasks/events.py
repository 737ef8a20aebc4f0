"""Events service tasks: populate (sample events), perf-events (the search benchmark).

Only invoke and the standard library are imported here (see tasks/core.py); the work runs
in the project's .venv against the store the services use (DATA_DIR / MONGODB_URL)."""

from __future__ import annotations

import io
import shlex

from invoke import Exit, task

from tasks.core import ROOT, VENV_PY, ensure_installed


@task(
    help={
        "count": "how many events (default 500)",
        "direct": "write straight into the events store instead of through the gateway",
        "username": "an admin's username (through the gateway)",
        "password": "that admin's password",
        "url": "the gateway's base URL (default http://127.0.0.1:GATEWAY_PORT)",
        "seed": "random seed: the same seed gives the same events",
        "days": "spread of the start dates, from today (default 180)",
        "no_outbox": "with --direct: do not queue event.created messages",
    }
)
def populate(
    c,
    count=500,
    direct=False,
    username="",
    password="",
    url="",
    seed=1,
    days=180,
    no_outbox=False,
):
    """Load realistic sample events (12 cities, 21 topics, months of dates) into a running
    suite through the gateway (as an admin), or directly into the store (--direct)."""
    ensure_installed(c)
    cmd = [
        str(VENV_PY), "-m", "devtools.populate",
        "--count", str(int(count)), "--seed", str(int(seed)), "--days", str(int(days)),
    ]  # fmt: skip
    stdin = False
    if direct:
        cmd.append("--direct")
        if no_outbox:
            cmd.append("--no-outbox")
    else:
        if not username or not password:
            raise Exit("through the gateway, give --username and --password of an admin", 2)
        cmd += ["--username", username, "--password-stdin"]
        if url:
            cmd += ["--url", url]
        # The password goes through stdin, not another process's argv.
        stdin = io.StringIO(password + "\n")
    result = c.run(shlex.join(cmd), in_stream=stdin, warn=True, pty=False)
    if result.exited:
        raise Exit("populate failed", result.exited)


@task(
    name="perf-events",
    help={
        "events": "events in the store (default 100000)",
        "requests": "requests per scenario (default 1000)",
    },
)
def perf_events(c, events=100_000, requests=1000):
    """Benchmark the events service over HTTP under granian (combined search, GET by id)."""
    ensure_installed(c)
    c.run(
        f"{VENV_PY} {ROOT / 'perf' / 'bench_events.py'} "
        f"--events {int(events)} --requests {int(requests)}"
    )
