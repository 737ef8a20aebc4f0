"""Storage-level benchmark of the SQLite adapter on an events-like collection.

Builds N events (default 100,000: 1-3 of 20 topics each, starts_at over 6 months, places
around 10 cities) in a temporary directory, then times queries with random parameters and
prints p50/p99 per query. The goal: the combined query (near 10 km + a one-week starts_at
range + a topic, sorted by starts_at, limit 20) at p99 <= 20 ms.

    .venv/bin/python perf/bench_storage.py [--events 100000] [--runs 300] [--spread-km 15]

Pass ``--dir`` to keep the database and reuse it on the next run (building takes ~1 min).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventpost.storage import AnyOf, CollectionSpec, Near, Query, Range
from eventpost.storage.sqlite import SqliteCollection, SqliteStore
from eventpost.timeutil import format_time

SPEC = CollectionSpec(
    name="events",
    indexes=(("starts_at",),),
    array_fields=("topics",),
    text_fields=("title", "description"),
    geo_field="place",
    geo_time_field="starts_at",
)
CITIES = {
    "Paris": (48.8566, 2.3522),
    "Berlin": (52.52, 13.405),
    "London": (51.5074, -0.1278),
    "New York": (40.7128, -74.006),
    "Tokyo": (35.6762, 139.6503),
    "Sydney": (-33.8688, 151.2093),
    "Sao Paulo": (-23.5505, -46.6333),
    "Nairobi": (-1.2921, 36.8219),
    "Toronto": (43.6532, -79.3832),
    "Suva": (-18.1248, 178.4501),
}
TOPICS = [f"topic{i:02d}" for i in range(20)]
# Text: a Zipf-like vocabulary, as in real prose: a few very common words, many rare ones.
WORDS = ["jazz", "rock", "concert", "night", "market", "food", "art", "talk", "meetup", "film"]
WORDS += [f"word{i}" for i in range(2000)]
WORD_WEIGHTS = [1 / (rank + 1) for rank in range(len(WORDS))]
START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 182


def _place(rng: random.Random, spread_km: float) -> dict[str, object]:
    city, (lat, lng) = rng.choice(list(CITIES.items()))
    dist = spread_km * math.sqrt(rng.random())  # uniform over a disk
    bearing = rng.uniform(0, 2 * math.pi)
    dlat = dist / 111.2 * math.cos(bearing)
    dlng = dist / (111.2 * math.cos(math.radians(lat))) * math.sin(bearing)
    return {"name": city, "address": "somewhere", "lat": lat + dlat, "lng": lng + dlng}


def build(coll: SqliteCollection, store: SqliteStore, count: int, spread_km: float) -> None:
    rng = random.Random(42)
    with store.transaction():
        for i in range(count):
            starts = START + timedelta(seconds=rng.uniform(0, DAYS * 86400))
            coll.insert(
                {
                    "id": f"ev{i:07d}",
                    "title": " ".join(_words(rng, 3)).capitalize(),
                    "description": " ".join(_words(rng, 25)),
                    "topics": rng.sample(TOPICS, rng.randint(1, 3)),
                    "starts_at": format_time(starts),
                    "ends_at": format_time(starts + timedelta(hours=3)),
                    "place": _place(rng, spread_km),
                    "created_at": format_time(START),
                    "updated_at": format_time(START),
                }
            )


def _words(rng: random.Random, k: int) -> list[str]:
    return rng.choices(WORDS, weights=WORD_WEIGHTS, k=k)


def _week(rng: random.Random) -> Range:
    start = START + timedelta(days=rng.uniform(0, DAYS - 7))
    return Range(gte=format_time(start), lt=format_time(start + timedelta(days=7)))


def _near(rng: random.Random, radius: float = 10.0) -> Near:
    lat, lng = rng.choice(list(CITIES.values()))
    return Near(lat, lng, radius)


def queries(coll: SqliteCollection, count: int) -> dict[str, Callable[[random.Random], object]]:
    by_start = (("starts_at", 1),)
    return {
        "combined near10km+week+topic": lambda r: coll.find(
            Query(
                where={"starts_at": _week(r), "topics": AnyOf([r.choice(TOPICS)])},
                near=_near(r),
                sort=by_start,
            )
        ),
        "combined, page 2": lambda r: _second_page(
            coll,
            Query(
                where={"starts_at": _week(r), "topics": AnyOf([r.choice(TOPICS)])},
                near=_near(r),
                sort=by_start,
            ),
        ),
        "combined near1km+week+2 topics": lambda r: coll.find(
            Query(
                where={"starts_at": _week(r), "topics": AnyOf(r.sample(TOPICS, 2))},
                near=_near(r, 1.0),
                sort=by_start,
            )
        ),
        "near10km sort=distance": lambda r: coll.find(
            Query(near=_near(r), sort=(("distance", 1),))
        ),
        "near10km+week sort=distance": lambda r: coll.find(
            Query(where={"starts_at": _week(r)}, near=_near(r), sort=(("distance", 1),))
        ),
        "week sort=starts_at": lambda r: coll.find(
            Query(where={"starts_at": _week(r)}, sort=by_start)
        ),
        "topic sort=starts_at": lambda r: coll.find(
            Query(where={"topics": r.choice(TOPICS)}, sort=by_start)
        ),
        "text 1 word sort=starts_at": lambda r: coll.find(
            Query(text=_words(r, 1)[0], sort=by_start)
        ),
        "text 2 words sort=starts_at": lambda r: coll.find(
            Query(text=" ".join(_words(r, 2)), sort=by_start)
        ),
        "text+near10km+week": lambda r: coll.find(
            Query(
                text=_words(r, 1)[0],
                where={"starts_at": _week(r)},
                near=_near(r),
                sort=by_start,
            )
        ),
        "get": lambda r: coll.get(f"ev{r.randrange(count):07d}"),
    }


def _second_page(coll: SqliteCollection, query: Query) -> object:
    first = coll.find(query)
    if first.next_cursor is None:
        return first
    return coll.find(Query(**{**query.__dict__, "cursor": first.next_cursor}))


def _percentiles(times: list[float]) -> tuple[float, float, float]:
    times = sorted(times)
    p99 = times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]
    return statistics.median(times), p99, times[-1]


def measure(fn: Callable[[random.Random], object], runs: int) -> tuple[tuple[float, ...], ...]:
    """(p50, p99, max) of the wall time and of this thread's CPU time, in ms (the machine is
    shared: CPU time shows the cost without the waits for a core)."""
    rng = random.Random(7)
    for _ in range(10):
        fn(rng)
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn(rng)
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - t0) * 1000)
    return _percentiles(wall), _percentiles(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--spread-km", type=float, default=15.0, help="radius around a city")
    parser.add_argument("--dir", help="reuse/keep the database in this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.dir or tmp) / "bench-events.sqlite3"
        fresh = not path.exists()
        store = SqliteStore(path, synchronous="NORMAL")
        coll = store.collection(SPEC)
        if fresh:
            t0 = time.perf_counter()
            build(coll, store, args.events, args.spread_km)
            print(f"built {args.events} events in {time.perf_counter() - t0:.1f} s")
        total = coll.count({})
        print(f"{total} events, {args.runs} runs per query (ms)")
        print(f"{'':34} {'wall time':^23}   {'CPU time':^23}")
        print(f"{'query':34} {'p50':>7} {'p99':>7} {'max':>7}   {'p50':>7} {'p99':>7} {'max':>7}")
        for name, fn in queries(coll, total).items():
            wall, cpu = measure(fn, args.runs)
            print(
                f"{name:34} "
                + " ".join(f"{v:7.2f}" for v in wall)
                + "   "
                + " ".join(f"{v:7.2f}" for v in cpu)
            )
        store.close()


if __name__ == "__main__":
    main()
