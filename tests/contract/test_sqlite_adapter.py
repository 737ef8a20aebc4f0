"""What only the SQLite adapter promises: several processes on one file, fork safety, its
query plans all giving the same answers, savepoints, spec changes."""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

import eventpost.storage._sqlite_find as sqlite_planner
from eventpost.geo import haversine_km
from eventpost.storage import AnyOf, CollectionSpec, DuplicateKey, Near, Query, Range
from eventpost.storage._sqlite_schema import CollectionSchema
from eventpost.storage.errors import StorageError
from eventpost.storage.sqlite import SqliteStore
from tests.contract.conftest import EVENTS

# -- several processes ----------------------------------------------------------------------


def _write_in_a_process(path: str, prefix: str, count: int, results) -> None:  # type: ignore[no-untyped-def]
    store = SqliteStore(Path(path), busy_timeout=30)
    events = store.collection(EVENTS)
    for n in range(count):
        events.insert(
            {"id": f"{prefix}{n}", "topics": [prefix], "title": f"{prefix} event"},
            events=[{"id": f"ev-{prefix}{n}", "type": "event.created", "payload": {}}],
        )
        if n % 10 == 0:
            events.update(f"{prefix}{n}", {"title": "changed"})
    store.close()
    results.put(prefix)


def test_two_processes_write_one_file_at_once(tmp_path):
    path = tmp_path / "shared.sqlite3"
    SqliteStore(path).collection(EVENTS)  # created before, as a service would at start
    context = multiprocessing.get_context("spawn")  # fresh interpreters, like real services
    results = context.Queue()
    processes = [
        context.Process(target=_write_in_a_process, args=(str(path), prefix, 150, results))
        for prefix in ("a", "b")
    ]
    for process in processes:
        process.start()
    done = sorted(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert done == ["a", "b"]
    store = SqliteStore(path)
    events = store.collection(EVENTS)
    assert events.count({}) == 300
    assert events.count({"topics": "a"}) == 150
    assert events.count({"title": "changed"}) == 30
    assert store.outbox_pending() == 300
    assert store.path.with_name("shared.sqlite3-wal").exists()  # WAL mode


def _open_new_files(directory: str, rounds: int, barrier, results) -> None:  # type: ignore[no-untyped-def]
    errors = []
    for n in range(rounds):
        barrier.wait(timeout=30)  # every process opens file n at the same moment
        store = SqliteStore(Path(directory) / f"new-{n}.sqlite3")
        try:
            store.collection(EVENTS).count({})
        except StorageError as exc:
            errors.append(str(exc))
        store.close()
    results.put(errors)


def test_instances_opening_a_new_file_at_once_all_get_it(tmp_path):
    # Two instances of a service answering their first requests on a new file both turn it
    # to WAL; without a wait of the store's own, about one open in ten was refused at once
    # ("database is locked") and its request answered 500.
    context = multiprocessing.get_context("fork")
    processes, rounds = 3, 40
    barrier, results = context.Barrier(processes), context.Queue()
    children = [
        context.Process(target=_open_new_files, args=(str(tmp_path), rounds, barrier, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    errors = [error for _ in children for error in results.get(timeout=120)]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert errors == []
    modes = set()
    for n in range(rounds):
        with contextlib.closing(sqlite3.connect(tmp_path / f"new-{n}.sqlite3")) as conn:
            modes.add(conn.execute("PRAGMA journal_mode").fetchone()[0])
    assert modes == {"wal"}


def _use_inherited_store(store: SqliteStore, results) -> None:  # type: ignore[no-untyped-def]
    events = store.collection(EVENTS)
    events.insert({"id": "from-child"})
    results.put(events.count({}))


def test_a_store_inherited_through_fork_opens_its_own_connection(tmp_path):
    store = SqliteStore(tmp_path / "s.sqlite3")
    events = store.collection(EVENTS)
    events.insert({"id": "from-parent"})
    parent_connection = store._connection()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    process = context.Process(target=_use_inherited_store, args=(store, results))
    process.start()
    assert results.get(timeout=30) == 2
    process.join(timeout=30)
    assert process.exitcode == 0
    assert store._connection() is parent_connection
    assert events.get("from-child") is not None


# -- transactions ---------------------------------------------------------------------------


def test_a_failed_write_inside_a_transaction_leaves_the_rest(tmp_path):
    store = SqliteStore(tmp_path / "s.sqlite3")
    people = store.collection(CollectionSpec(name="people", unique=(("email",),)))
    people.insert({"id": "p1", "email": "a@x.org"})
    with store.transaction():
        people.insert({"id": "p2", "email": "b@x.org"}, events=[{"id": "ev-1"}])
        with pytest.raises(DuplicateKey):
            people.insert({"id": "p3", "email": "a@x.org"}, events=[{"id": "ev-2"}])
        with pytest.raises(RuntimeError), store.transaction():
            people.insert({"id": "p4"}, events=[{"id": "ev-3"}])
            raise RuntimeError("inner block fails")
    assert sorted(d["id"] for d in people.find(Query()).items) == ["p1", "p2"]
    assert [e["id"] for e in store.iter_outbox()] == ["ev-1"]


def test_a_document_with_an_integer_beyond_64_bits_reads_back(tmp_path):
    # Documents are read with orjson, which stops at 64 bits; the json module reads the rest.
    store = SqliteStore(tmp_path / "db.sqlite3")
    things = store.collection(CollectionSpec("things"))
    things.insert({"id": "big", "n": 2**70})
    assert things.get("big")["n"] == 2**70
    store.close()


def test_close_then_use_again(tmp_path):
    store = SqliteStore(tmp_path / "s.sqlite3")
    events = store.collection(EVENTS)
    events.insert({"id": "e1"})
    store.close()
    assert events.get("e1") is not None
    store.ping()


def test_a_changed_spec_rebuilds_indexes_from_the_documents(tmp_path):
    path = tmp_path / "s.sqlite3"
    plain = SqliteStore(path).collection(CollectionSpec(name="things"))
    plain.insert({"id": "t1", "tags": ["a", "b"], "name": "Blue chair", "at": {"lat": 1, "lng": 2}})
    plain.insert({"id": "t2", "tags": ["b"], "name": "Red chair", "code": "x"})
    richer = SqliteStore(path).collection(
        CollectionSpec(
            name="things",
            unique=(("code",),),
            array_fields=("tags",),
            text_fields=("name",),
            geo_field="at",
        )
    )
    assert richer.count({"tags": "a"}) == 1
    assert [d["id"] for d in richer.find(Query(text="chair")).items] == ["t1", "t2"]
    assert [d["id"] for d in richer.find(Query(near=Near(1, 2, 1))).items] == ["t1"]
    with pytest.raises(DuplicateKey):
        richer.insert({"id": "t3", "code": "x"})


# -- every query plan gives the same answer -------------------------------------------------

WORDS = ["jazz", "rock", "night", "open", "air", "talk", "film", "and", "not"]
CENTERS = [(48.85, 2.35), (-17.0, 179.95), (89.9, 10.0), (0.0, 0.0)]


def _random_event(rng: random.Random, n: int) -> dict:
    lat, lng = rng.choice(CENTERS)
    lat = max(-90.0, min(90.0, lat + rng.uniform(-0.2, 0.2)))
    lng = (lng + rng.uniform(-0.3, 0.3) + 180.0) % 360.0 - 180.0
    doc = {
        "id": f"e{n:03d}",
        "title": " ".join(rng.sample(WORDS, 2)),
        "description": " ".join(rng.choices(WORDS, k=3)),
        "topics": rng.sample(["a", "b", "c", "d"], rng.randint(0, 2)),
        "starts_at": f"2026-0{rng.randint(1, 3)}-{rng.randint(10, 28)}",
        "place": {"city": rng.choice(["x", "y", None]), "lat": lat, "lng": lng},
    }
    if rng.random() < 0.1:
        del doc["place"]
    if rng.random() < 0.1:
        del doc["starts_at"]
    return doc


def _matches(doc: dict, query: Query) -> bool:
    for path, cond in query.where.items():
        value = doc
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        values = value if path == "topics" else [value]
        if isinstance(cond, AnyOf) and not any(v in cond.values for v in values):
            return False
        if isinstance(cond, Range) and not (
            value is not None
            and (cond.gte is None or value >= cond.gte)
            and (cond.gt is None or value > cond.gt)
            and (cond.lte is None or value <= cond.lte)
            and (cond.lt is None or value < cond.lt)
        ):
            return False
    if query.text is not None:
        words = set(re.findall(r"\w+", f"{doc['title']} {doc['description']}".lower()))
        if not set(query.text.lower().split()) <= words:
            return False
    if query.near is not None:
        place = doc.get("place")
        if not place or _distance(doc, query.near) > query.near.radius_km:
            return False
    return True


def _distance(doc: dict, near: Near) -> float:
    return haversine_km(near.lat, near.lng, doc["place"]["lat"], doc["place"]["lng"])


def _expected(docs: list[dict], query: Query) -> list[str]:
    chosen = [d for d in docs if _matches(d, query)]
    field, direction = query.sort[0] if query.sort else ("id", 1)
    if field == "distance":
        chosen.sort(key=lambda d: (_distance(d, query.near), d["id"]))
    else:
        # missing values first when ascending; the id follows the direction
        chosen.sort(key=lambda d: (d.get(field) is not None, d.get(field) or "", d["id"]))
    if direction == -1:
        chosen.reverse()
    return [d["id"] for d in chosen]


def _random_query(rng: random.Random) -> Query:
    where: dict = {}
    if rng.random() < 0.5:
        where["topics"] = AnyOf(rng.sample(["a", "b", "c", "d"], rng.randint(1, 2)))
    if rng.random() < 0.5:
        where["starts_at"] = Range(gte="2026-02-01", lt=rng.choice(["2026-03-01", "2026-04-01"]))
    text = " ".join(rng.sample(WORDS, rng.randint(1, 2))) if rng.random() < 0.5 else None
    near = None
    if rng.random() < 0.7:
        lat, lng = rng.choice(CENTERS)
        near = Near(lat, lng, rng.choice([5.0, 20.0, 60.0]))
    sorts = [(("starts_at", 1),), (("starts_at", -1),), ()]
    if near is not None:
        sorts.append((("distance", 1),))
    return Query(where=where, text=text, near=near, sort=rng.choice(sorts), limit=7)


PLANS = {
    "candidates lead": {"CANDIDATES_CAP": 10**9},
    "table walks": {"CANDIDATES_CAP": 0},
    "walk runs out of time": {"CANDIDATES_CAP": 0, "WALK_BUDGET_SECONDS": -1.0},
    "text row by row": {"CANDIDATES_CAP": 0, "DENSE_TEXT": 0},
    "nearest first in a smaller circle": {"NEAREST_FIRST_MARGIN": 0.5},
}


@pytest.mark.parametrize("plan", list(PLANS))
def test_every_plan_pages_through_the_right_documents(tmp_path, monkeypatch, plan):
    for name, value in PLANS[plan].items():
        monkeypatch.setattr(sqlite_planner, name, value)
    rng = random.Random(20260101)
    store = SqliteStore(tmp_path / "s.sqlite3")
    events = store.collection(EVENTS)
    docs = [_random_event(rng, n) for n in range(250)]
    with store.transaction():
        for doc in docs:
            events.insert(doc)
    checked = 0
    for _ in range(40):
        query = _random_query(rng)
        seen: list[str] = []
        cursor = None
        while True:
            page = events.find(Query(**{**query.__dict__, "cursor": cursor}))
            seen += [d["id"] for d in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == _expected(docs, query), query
        checked += len(seen)
    assert checked > 100  # the queries found something


# -- the same with a time dimension in the geo index ----------------------------------------

TIMED_EVENTS = replace(EVENTS, geo_time_field="starts_at")


def _canonical_time(rng: random.Random) -> str:
    return (
        f"2026-0{rng.randint(1, 3)}-{rng.randint(10, 28):02d}T{rng.randint(0, 23):02d}:"
        f"{rng.choice(['00', '30'])}:00.{rng.choice(['000000', '000001', '999999'])}Z"
    )


def _timed_event(rng: random.Random, n: int) -> dict:
    doc = _random_event(rng, n)
    roll = rng.random()
    if roll < 0.8:
        doc["starts_at"] = _canonical_time(rng)
    elif roll < 0.85:
        doc["starts_at"] = None
    elif roll < 0.9:
        doc["starts_at"] = "2026-02-30T20:00:00.000000Z"  # no such day
    # else: missing (10% of _random_event) or a short, non-canonical date
    return doc


def _timed_query(rng: random.Random, docs: list[dict]) -> Query:
    query = _random_query(rng)
    times = [d["starts_at"] for d in docs if isinstance(d.get("starts_at"), str)]
    bounds = {}
    for low, high in (("gte", "lte"), ("gt", "lt"), ("gte", "lt"), ("gt", "lte")):
        if rng.random() < 0.4:
            # often a time some document has, so that inclusive and exclusive bounds differ
            first, last = sorted(rng.choice([*times, _canonical_time(rng)]) for _ in range(2))
            bounds = {low: first, high: last} if rng.random() < 0.8 else {low: first}
            break
    else:
        if rng.random() < 0.3:
            bounds = {"gte": "2026-02", "lt": _canonical_time(rng)}  # one non-canonical bound
    where = dict(query.where)
    where.pop("starts_at", None)
    if bounds:
        where["starts_at"] = Range(**bounds)
    return replace(query, where=where)


@pytest.mark.parametrize("plan", list(PLANS))
def test_every_plan_with_a_time_dimension_pages_through_the_right_documents(
    tmp_path, monkeypatch, plan
):
    for name, value in PLANS[plan].items():
        monkeypatch.setattr(sqlite_planner, name, value)
    rng = random.Random(20260301)
    store = SqliteStore(tmp_path / "s.sqlite3")
    events = store.collection(TIMED_EVENTS)
    docs = [_timed_event(rng, n) for n in range(300)]
    with store.transaction():
        for doc in docs:
            events.insert(doc)
    checked = ranged = 0
    for _ in range(60):
        query = _timed_query(rng, docs)
        seen: list[str] = []
        cursor = None
        while True:
            page = events.find(replace(query, cursor=cursor))
            seen += [d["id"] for d in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == _expected(docs, query), query
        checked += len(seen)
        ranged += bool(seen) and query.near is not None and "starts_at" in query.where
    assert checked > 100 and ranged > 5  # the queries found something, near + range too


def _geo_tables(path: Path) -> dict[str, str]:
    """name -> CREATE statement of the geo R*Trees of ``events``."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE name IN ('events__geo', 'events__geot')"
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


def test_a_file_with_a_flat_geo_index_gets_the_time_dimension(tmp_path):
    path = tmp_path / "s.sqlite3"
    rng = random.Random(5)
    docs = [_timed_event(rng, n) for n in range(200)]
    old = SqliteStore(path)
    flat = old.collection(EVENTS)
    with old.transaction():
        for doc in docs:
            flat.insert(doc)
    old.close()
    assert list(_geo_tables(path)) == ["events__geo"]
    # the same spec again (as every existing file has it): nothing is rebuilt
    spec_json = CollectionSchema(EVENTS).spec_json
    assert "geo_time_field" not in spec_json
    store = SqliteStore(path)
    store.collection(EVENTS)
    assert list(_geo_tables(path)) == ["events__geo"]
    events = SqliteStore(path).collection(TIMED_EVENTS)
    tables = _geo_tables(path)
    assert "min_t" in tables["events__geot"] and "min_t" not in tables["events__geo"]
    query = Query(
        where={"starts_at": Range(gte="2026-02-01T00:00:00.000000Z", lt="2026-03-01")},
        near=Near(*CENTERS[0], 30.0),
        sort=(("starts_at", 1),),
        limit=100,
    )
    found = [d["id"] for d in events.find(query).items]
    assert found and found == _expected(docs, query)
    # and back: a spec without the time field rebuilds the flat index
    SqliteStore(path).collection(EVENTS)
    assert list(_geo_tables(path)) == ["events__geo"]


def test_an_outbox_written_before_attempts_were_counted_gets_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, lease_owner TEXT, lease_until REAL)"
    )
    conn.execute("INSERT INTO outbox(id, body) VALUES ('ev-old', '{\"id\": \"ev-old\"}')")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    assert [e["id"] for e in store.outbox_claim("relay", 30.0)] == ["ev-old"]
    assert store.outbox_failed("ev-old", "refused", park_after=1) == 1
    assert [p.event["id"] for p in store.outbox_parked()] == ["ev-old"]
    store.close()
