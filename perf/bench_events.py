"""The events service over HTTP, on the embedded store (``invoke perf-events``).

Loads N sample events (default 100,000: 12 cities, 21 topics, 180 days; see
devtools/samples.py) straight into a SQLite store in a temporary DATA_DIR, starts the
events service under granian (``python -m eventpost.serve``, 1 worker, 8 threads, as the
launcher runs it) on a free port, and measures, with a keep-alive aiohttp client, at
concurrency 1 and 10:

- ``search``: the combined search ``near`` (a point within 10 km of a city centre,
  radius_km=10) + a one-week ``from``/``to`` window + one ``topic``, sorted by start, limit
  20; every request has its own parameters, so the read cache never answers (cold);
- ``search (repeated)``: one such search over and over (answered by the read cache);
- ``get``: ``GET /v1/events/{id}`` of random events.

Latencies are measured at the client (request sent to body read) and, from the service's
own request log (duration_ms), at the server. The goal: search p99 <=
20 ms. Prints a table and writes perf/results/bench_events.json.

    .venv/bin/python perf/bench_events.py [--events 100000] [--requests 1000] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from devtools.populate import load_direct  # noqa: E402
from devtools.samples import CITIES, TOPICS, sample_events  # noqa: E402
from eventpost.serve import server_command  # noqa: E402
from eventpost.settings import Settings  # noqa: E402
from eventpost.storage import open_store  # noqa: E402
from services.events.store import EventsStore  # noqa: E402

START = datetime(2026, 1, 5, tzinfo=UTC)
DAYS = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load(data_dir: Path, count: int) -> list[str]:
    """Fill the events store of ``data_dir``; returns the ids."""
    settings = Settings(service="events", data_dir=data_dir)
    store = open_store(settings, "events")
    started = time.perf_counter()
    load_direct(
        EventsStore(store), sample_events(count, seed=42, start=START, days=DAYS), outbox=False
    )
    ids = [row[0] for row in _ids(data_dir)]
    store.close()
    print(f"loaded {count} events in {time.perf_counter() - started:.1f} s", flush=True)
    return ids


def _ids(data_dir: Path) -> list[tuple[str]]:
    import sqlite3

    with sqlite3.connect(data_dir / "events.sqlite3") as conn:
        return conn.execute("SELECT json_extract(doc, '$.id') FROM events").fetchall()


def start_service(data_dir: Path, port: int, workers: int = 1) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "EVENTS_PORT": str(port),
        # INFO: one JSON line per request with its duration, for the server-side figures.
        "LOG_LEVEL": "INFO",
    }
    proc = subprocess.Popen(
        server_command("events", "127.0.0.1", port, threads=8, workers=workers),
        cwd=ROOT, env=env, stdout=(data_dir / "service.log").open("ab"),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("the events service did not become ready")


def _search_with_results(base: str, rng: random.Random) -> str:
    """A combined search that finds something (for the repeated scenario)."""
    for _ in range(200):
        path = search_path(rng)
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            if json.loads(resp.read())["items"]:
                return path
    return path


def search_path(rng: random.Random) -> str:
    _, lat, lng, _ = CITIES[rng.choice(list(CITIES))]
    # A point within 10 km of the centre (uniform over the disk).
    dist, bearing = 10 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
    lat += dist / 111.2 * math.cos(bearing)
    lng += dist / (111.2 * math.cos(math.radians(lat))) * math.sin(bearing)
    day = START + timedelta(days=rng.randrange(DAYS - 7), hours=rng.randrange(24))
    params = {
        "near": f"{lat:.5f},{lng:.5f}",
        "radius_km": "10",
        "from": day.isoformat(),
        "to": (day + timedelta(days=7)).isoformat(),
        "topic": rng.choice(list(TOPICS)),
    }
    return "/v1/events?" + urlencode(params)


async def run(base: str, paths: list[str], concurrency: int) -> tuple[list[float], list[int]]:
    """Send every path (GET) with ``concurrency`` workers on keep-alive connections;
    latencies in ms and item counts of list answers."""
    latencies: list[float] = []
    counts: list[int] = []
    queue = iter(paths)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(base, connector=connector) as session:

        async def worker() -> None:
            for path in queue:
                started = time.perf_counter()
                async with session.get(path) as resp:
                    body = await resp.read()
                latencies.append((time.perf_counter() - started) * 1000)
                if resp.status != 200:
                    raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
                if path.startswith("/v1/events?"):
                    counts.append(len(json.loads(body)["items"]))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, counts


def server_times(log: Path, offset: int) -> tuple[list[float], int]:
    """Durations (ms) the service logged for its requests after ``offset``; new offset."""
    with log.open("rb") as f:
        f.seek(offset)
        data = f.read()
    durations = []
    for line in data.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "duration_ms" in record:
            durations.append(float(record["duration_ms"]))
    return durations, offset + len(data)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000, help="per scenario")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    args = parser.parse_args()

    rng = random.Random(7)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        data_dir = Path(tmp)
        ids = load(data_dir, args.events)
        port = free_port()
        proc = start_service(data_dir, port, args.workers)
        log = data_dir / "service.log"
        base = f"http://127.0.0.1:{port}"
        try:
            repeated = _search_with_results(base, rng)
            scenarios: dict[str, Callable[[], str]] = {
                "search": lambda: search_path(rng),
                "search (repeated)": lambda: repeated,
                "get": lambda: f"/v1/events/{rng.choice(ids)}",
            }
            asyncio.run(run(base, [search_path(rng) for _ in range(100)], 2))  # warm-up
            time.sleep(0.2)
            _, offset = server_times(log, 0)
            for name, make in scenarios.items():
                for concurrency in (1, 10):
                    paths = [make() for _ in range(args.requests)]
                    started = time.perf_counter()
                    latencies, counts = asyncio.run(run(base, paths, concurrency))
                    elapsed = time.perf_counter() - started
                    time.sleep(0.2)  # the last log lines
                    served, offset = server_times(log, offset)
                    row = {
                        "scenario": name,
                        "concurrency": concurrency,
                        "requests": len(latencies),
                        "p50_ms": round(statistics.median(latencies), 2),
                        "p99_ms": round(percentile(latencies, 99), 2),
                        "max_ms": round(max(latencies), 2),
                        "rps": round(len(latencies) / elapsed, 1),
                        "server_p50_ms": round(statistics.median(served), 2),
                        "server_p99_ms": round(percentile(served, 99), 2),
                    }
                    if counts:
                        row["mean_items"] = round(statistics.mean(counts), 1)
                    results.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)

    print()
    print(
        f"events service over HTTP ({args.workers} granian worker(s) x 8 threads), "
        f"{args.events} events (SQLite); client: request sent to "
        "body read; server: the service's own duration_ms"
    )
    print(
        f"{'scenario':<20}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'req/s':>8}"
        f"{'srv p50':>9}{'srv p99':>9}{'items':>7}"
    )
    for row in results:
        print(
            f"{row['scenario']:<20}{row['concurrency']:>5}{row['p50_ms']:>9}"
            f"{row['p99_ms']:>9}{row['max_ms']:>9}{row['rps']:>8}"
            f"{row['server_p50_ms']:>9}{row['server_p99_ms']:>9}{row.get('mean_items', ''):>7}"
        )
    out = ROOT / "perf" / "results"
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "events": args.events,
        "workers": args.workers,
        "measured_at": datetime.now(UTC).isoformat(),
    }
    summary["results"] = results
    (out / "bench_events.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
