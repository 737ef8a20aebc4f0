"""``invoke loadtest``: the seed's load tests through the gateway, with a report to look at.

1. If nothing answers at ``--url``, starts the whole suite there (its own data directory under
   perf/results/, its own RabbitMQ virtual host, the gateway's rate limit off) and stops it at
   the end; a suite that already answers is used as it is.
2. Makes sure the admin ``EVENTPOST_ADMIN_USERNAME`` / ``EVENTPOST_ADMIN_PASSWORD`` exists
   (``create-admin`` against the suite's store) and that there are at least 100 events
   (sample events POSTed through the gateway).
3. Runs the scenario's Locust users (perf/taurus/, the same ones ``bzt`` runs) for
   ``--duration`` seconds at ``--users``, printing a progress line.
4. Runs the same Locust client against a bare Falcon ASGI hello served like the gateway
   (uvicorn, one worker), so the report can state the scenario's throughput as a share of it.
5. Writes perf/results/loadtest-<scenario>-<users>u-<time>/ with ``report.html`` (inline SVG
   plots: throughput, p50/p95/p99 latency and errors over time, per request type; no network
   needed to view it), ``summary.json`` and the raw samples.

    .venv/bin/python perf/loadtest.py --scenario events --users 10 --duration 30
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))

from loadtest_report import analyse, write_report  # noqa: E402

from devtools.launcher import Suite, free_port, http_status  # noqa: E402
from devtools.samples import sample_events  # noqa: E402

TAURUS = ROOT / "perf" / "taurus"
RESULTS = ROOT / "perf" / "results"
SCENARIOS = {
    "events": ["events_get.py", "events_ppd.py"],
    "notifications": ["notifications_get.py", "notifications_ppd.py"],
    "suite": ["events_get.py", "events_ppd.py", "notifications_get.py", "notifications_ppd.py"],
}
MIN_EVENTS = 100  # the GET scenarios list a page of 100
DEFAULT_ADMIN = ("loadtest_admin", "loadtest admin password")


@dataclass
class Target:
    """The suite under test and what the report should say about it."""

    url: str
    env: dict[str, str]
    started_here: bool
    notes: list[str] = field(default_factory=list)


# -- the suite -------------------------------------------------------------------------------


@contextlib.contextmanager
def own_vhost(base: str) -> Iterator[str]:
    """An AMQP URL on a RabbitMQ virtual host of this run's own (deleted afterwards), so the
    suite started here never consumes another suite's messages on a shared broker."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        yield base
        return
    vhost = f"eventpost-loadtest-{uuid.uuid4().hex[:10]}"
    run = {"check": True, "capture_output": True, "timeout": 60}
    subprocess.run([ctl, "-q", "add_vhost", vhost], **run)
    subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], **run)
    try:
        yield base.rsplit("/", 1)[0] + "/" + vhost
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


@contextlib.contextmanager
def suite_at(url: str, run_dir: Path, say) -> Iterator[Target]:
    """The suite answering at ``url``, started (and stopped afterwards) when none answers."""
    env = dict(os.environ)
    if http_status(f"{url}/ready", timeout=2.0) == 200:
        limit = env.get("GATEWAY_RATE_LIMIT")
        note = "suite already running: used as it is"
        note += f" (GATEWAY_RATE_LIMIT={limit} here)" if limit else " (its rate limit unknown)"
        yield Target(url, env, started_here=False, notes=[note])
        return
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"nothing answers at {url}, and a suite starts only on this machine")
    base_amqp = env.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/%2F"
    with own_vhost(base_amqp) as amqp_url:
        env.update(
            {
                "AMQP_URL": amqp_url,
                "DATA_DIR": str(run_dir / "suite"),
                "GATEWAY_PORT": str(parsed.port or 80),
                "USERS_PORT": str(free_port()),
                "EVENTS_PORT": str(free_port()),
                "NOTIFICATIONS_PORT": str(free_port()),
                "SMTP_PORT": str(free_port()),
                # One load client sends everything from one address: the limit would be the test.
                "GATEWAY_RATE_LIMIT": "0",
            }
        )
        env.pop("SMTP_HOST", None)
        say(f"No suite answers at {url}: starting one (logs in {run_dir / 'suite' / 'log'}) ...")
        suite = Suite(env, with_smtp_sink=True, say=say)
        suite.start(ready_timeout=120)
        try:
            yield Target(
                url, env, started_here=True, notes=["suite started by loadtest, rate limit off"]
            )
        finally:
            say("Stopping the suite started for the load test ...")
            suite.stop()


def _call(url: str, method: str = "GET", body=None, token: str | None = None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def ensure_admin(target: Target) -> tuple[str, str]:
    """The admin the write scenarios log in as: logs in, or creates it in the suite's store."""
    username = target.env.get("EVENTPOST_ADMIN_USERNAME") or DEFAULT_ADMIN[0]
    password = target.env.get("EVENTPOST_ADMIN_PASSWORD") or DEFAULT_ADMIN[1]
    login = {"username": username, "password": password}
    if _call(f"{target.url}/v1/auth/token", "POST", login)[0] == 200:
        return username, password
    cmd = [sys.executable, "-m", "services.users.admin", "create-admin", "--username", username]
    cmd += ["--email", f"{username}@example.test", "--password-stdin"]
    subprocess.run(
        cmd, input=password + "\n", text=True, cwd=ROOT, env=target.env, check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    if _call(f"{target.url}/v1/auth/token", "POST", login)[0] != 200:
        raise SystemExit(
            f"cannot log in as the admin {username!r}: set EVENTPOST_ADMIN_USERNAME and "
            "EVENTPOST_ADMIN_PASSWORD to an admin of the running suite"
        )
    return username, password


def ensure_events(target: Target, admin: tuple[str, str], say) -> None:
    """At least MIN_EVENTS events listed (sample events POSTed as the admin when fewer)."""
    from devtools.populate import load_via_gateway

    status, page = _call(f"{target.url}/v1/events?limit=100")
    have = len(page["items"]) if status == 200 and page else 0
    if have >= MIN_EVENTS:
        return
    say(f"Populating: {2 * MIN_EVENTS} sample events through the gateway ...")
    load_via_gateway(target.url, *admin, sample_events(2 * MIN_EVENTS, seed=13, days=180))


# -- load ------------------------------------------------------------------------------------


def _progress(stats_csv: Path) -> tuple[int, int]:
    """Requests and failures so far, from Locust's periodically written stats CSV."""
    try:
        with stats_csv.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("Name") == "Aggregated":
                    return int(row["Request Count"]), int(row["Failure Count"])
    except (OSError, ValueError, KeyError):
        pass
    return 0, 0


def run_locust(
    label: str, files: list[str], host: str, users: int, duration: int, out: Path, env: dict
) -> Path:
    """Run Locust headless; a progress line on stderr; the samples file it wrote."""
    samples = out / f"{label}.samples.tsv"
    samples.unlink(missing_ok=True)
    spawn_rate = max(1.0, users / max(1.0, min(5.0, duration / 5)))
    cmd = [
        sys.executable, "-m", "locust", "-f", ",".join(str(TAURUS / f) for f in files),
        "--headless", "--only-summary", "--users", str(users), "--spawn-rate", f"{spawn_rate:g}",
        "--run-time", f"{duration}s", "--stop-timeout", "5", "--host", host,
        "--csv", str(out / label), "--loglevel", "WARNING", "--exit-code-on-error", "0",
    ]  # fmt: skip
    run_env = {**env, "EVENTPOST_LOADTEST_SAMPLES": str(samples), "PYTHONPATH": str(TAURUS)}
    started = time.monotonic()
    with (out / f"{label}.locust.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(1.0)
            elapsed = time.monotonic() - started
            done, failed = _progress(out / f"{label}_stats.csv")
            sys.stderr.write(
                f"\r  {label}: {min(elapsed, duration):4.0f}/{duration} s, {users} users, "
                f"{done:,} requests ({done / max(elapsed, 1e-9):,.0f} req/s), {failed:,} errors  "
            )
            sys.stderr.flush()
        sys.stderr.write("\n")
    if proc.returncode != 0 or not samples.exists():
        tail = (out / f"{label}.locust.log").read_text(errors="replace")[-2000:]
        raise SystemExit(f"locust ({label}) failed with {proc.returncode}:\n{tail}")
    return samples


@contextlib.contextmanager
def hello_server(out: Path) -> Iterator[str]:
    """The bare Falcon ASGI hello (perf/hello_app.py) on a free port; its base URL."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "perf" / "hello_app.py"), "--port", str(port)]
    with (out / "hello.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while http_status(f"{url}/health") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the hello app did not start; see {out / 'hello.log'}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def new_run_dir(out: Path, name: str) -> Path:
    """A fresh directory for one run's files: ``<out>/<name>-<UTC time>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = (out / f"{name}-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


# -- main ------------------------------------------------------------------------------------


def one_run(target: Target, env: dict, args: argparse.Namespace, users: int, say) -> dict:
    """The scenario at ``users``, then the hello at the same users (while the suite idles, so
    both see the machine as it is now); the summary, with report.html and summary.json."""
    run_dir = new_run_dir(args.out, f"loadtest-{args.scenario}-{users}u")
    stamp = run_dir.name.rsplit("-", 2)[-2] + "-" + run_dir.name.rsplit("-", 1)[-1]
    load_before = os.getloadavg()[0]
    say(f"Load test '{args.scenario}' at {target.url}: {users} users for {args.duration} s")
    files = SCENARIOS[args.scenario]
    samples = run_locust(args.scenario, files, target.url, users, args.duration, run_dir, env)
    hello_duration = args.hello_duration or min(args.duration, 20)
    say(f"Yardstick: bare Falcon ASGI hello, {users} users for {hello_duration} s")
    with hello_server(run_dir) as hello_url:
        hello_samples = run_locust(
            "hello", ["hello.py"], hello_url, users, hello_duration, run_dir, dict(os.environ)
        )
    meta = {
        "scenario": args.scenario,
        "users": users,
        "duration_s": args.duration,
        "url": target.url,
        "started_at": stamp,
        "suite_started_here": target.started_here,
        "notes": target.notes,
        "locustfiles": files,
        # How busy the (shared) machine was: 1-minute load average before and after.
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }
    summary = analyse(samples, hello_samples, meta)
    report = write_report(run_dir, summary)
    total = summary["total"]
    say(
        f"{total['requests']:,} requests, {total['rps']:,.0f} req/s, {total['errors']} errors, "
        f"p50 {total['p50_ms']:.0f} ms, p99 {total['p99_ms']:.0f} ms; "
        f"hello {summary['hello']['rps']:,.0f} req/s (ratio {summary['ratio_to_hello']:.2f})"
    )
    say(f"Report: {report}\nSummary: {run_dir / 'summary.json'}")
    return summary


def table(summaries: list[dict]) -> str:
    """The README's table of several runs (markdown)."""
    lines = [
        "| users | req/s | errors | p50 ms | p99 ms | bare hello, same client and users | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        t = s["total"]
        lines.append(
            f"| {s['users']} | {t['rps']:,.0f} | {t['errors']:,} | {t['p50_ms']:,.0f} | "
            f"{t['p99_ms']:,.0f} | {s['hello']['rps']:,.0f} req/s | {s['ratio_to_hello']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="events")
    parser.add_argument("--users", default="10", help="users, or several: 10,100,200,500")
    parser.add_argument("--duration", type=int, default=30, help="seconds")
    parser.add_argument("--url", default="", help="the gateway (default 127.0.0.1:GATEWAY_PORT)")
    parser.add_argument("--hello-duration", type=int, default=0, help="default: min(dur, 20)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    users = [int(u) for u in str(args.users).split(",") if u.strip()]
    url = (args.url or f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}").rstrip("/")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    suite_dir = (args.out / f"loadtest-{args.scenario}-suite-{stamp}").resolve()  # made if used

    def say(line: str) -> None:
        print(line, flush=True)

    with suite_at(url, suite_dir, say) as target:
        admin = ensure_admin(target)
        ensure_events(target, admin, say)
        env = {
            **target.env,
            "EVENTPOST_ADMIN_USERNAME": admin[0],
            "EVENTPOST_ADMIN_PASSWORD": admin[1],
        }
        # One suite for every user count, as the seed ran its series against one service.
        summaries = [one_run(target, env, args, n, say) for n in users]
    if len(summaries) > 1:
        markdown = table(summaries)
        path = suite_dir / "table.md"
        suite_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown + "\n")
        say(f"{markdown}\nTable: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
