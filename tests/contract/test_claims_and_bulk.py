"""claim(), update_many() and delete_many()."""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from eventpost.storage import AnyOf, CollectionSpec, Range, Store
from tests.contract.conftest import backend_of, needs

JOBS = CollectionSpec(name="jobs", indexes=(("status", "due"),))


@pytest.fixture
def jobs(store):
    return store.collection(JOBS)


def _fill(jobs, count: int) -> None:
    for n in range(count):
        jobs.insert({"id": f"j{n:03d}", "status": "ready", "due": f"2026-01-01T00:{n % 60:02d}"})


def test_claim_takes_the_first_by_sort_and_applies_changes(jobs):
    jobs.insert({"id": "a", "status": "ready", "due": "2026-01-03"})
    jobs.insert({"id": "b", "status": "ready", "due": "2026-01-01"})
    jobs.insert({"id": "c", "status": "done", "due": "2026-01-01"})
    jobs.insert({"id": "d", "status": "ready", "due": "2026-01-02"})
    claimed = jobs.claim({"status": "ready"}, {"status": "taken", "by": "w1"}, sort=[("due", 1)])
    assert claimed == {"id": "b", "status": "taken", "due": "2026-01-01", "by": "w1", "version": 2}
    assert jobs.get("b") == claimed
    latest = jobs.claim({"status": "ready"}, {"status": "taken"}, sort=[("due", -1)])
    assert latest["id"] == "a"
    assert jobs.claim({"status": "ready"}, {"status": "taken"})["id"] == "d"
    assert jobs.claim({"status": "ready"}, {"status": "taken"}) is None


def test_claim_with_a_range_filter(jobs):
    jobs.insert({"id": "late", "status": "ready", "due": "2026-05-01"})
    jobs.insert({"id": "soon", "status": "ready", "due": "2026-01-01"})
    due = {"status": "ready", "due": Range(lte="2026-02-01")}
    assert jobs.claim(due, {"status": "taken"})["id"] == "soon"
    assert jobs.claim(due, {"status": "taken"}) is None


def test_concurrent_claims_from_threads_never_share_a_document(store, jobs):
    needs(store, "threads")
    _fill(jobs, 40)
    taken: list[list[str]] = [[] for _ in range(4)]

    def worker(n: int) -> None:
        while (
            doc := jobs.claim({"status": "ready"}, {"status": f"w{n}"}, [("due", 1)])
        ) is not None:
            taken[n].append(doc["id"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    every = [doc_id for ids in taken for doc_id in ids]
    assert sorted(every) == [f"j{n:03d}" for n in range(40)]
    for n, ids in enumerate(taken):
        assert all(jobs.get(doc_id)["status"] == f"w{n}" for doc_id in ids)


def _open_like(backend: str, location: str) -> Store:
    if backend == "sqlite":
        from eventpost.storage.sqlite import SqliteStore

        return SqliteStore(Path(location))
    from eventpost.storage.mongo import MongoStore

    url, database = location.rsplit("|", 1)
    return MongoStore(url, database=database)


def _claim_in_a_process(backend: str, location: str, results) -> None:  # type: ignore[no-untyped-def]
    store = _open_like(backend, location)
    jobs = store.collection(JOBS)
    got = []
    while (
        doc := jobs.claim({"status": "ready"}, {"status": str(os.getpid())}, [("due", 1)])
    ) is not None:
        got.append(doc["id"])
    store.close()
    results.put(got)


def _location(store: Store) -> str:
    backend = backend_of(store)
    if backend == "sqlite":
        return str(store.path)  # type: ignore[attr-defined]
    return f"{store.url}|{store.database_name}"  # type: ignore[attr-defined]


def test_concurrent_claims_from_processes_never_share_a_document(store, jobs):
    needs(store, "processes")
    _fill(jobs, 60)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    args = (backend_of(store), _location(store), results)
    processes = [context.Process(target=_claim_in_a_process, args=args) for _ in range(3)]
    for process in processes:
        process.start()
    taken = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    every = [doc_id for ids in taken for doc_id in ids]
    assert sorted(every) == [f"j{n:03d}" for n in range(60)]


def test_update_many(jobs):
    _fill(jobs, 5)
    jobs.update("j001", {"status": "done"})
    changed = jobs.update_many({"status": "ready"}, {"status": "cancelled", "reason": None})
    assert changed == 4
    assert jobs.count({"status": "cancelled"}) == 4
    assert jobs.get("j000") == {
        "id": "j000",
        "status": "cancelled",
        "due": "2026-01-01T00:00",
        "reason": None,
        "version": 2,
    }
    assert jobs.get("j001")["version"] == 2
    assert jobs.get("j001")["status"] == "done"
    assert jobs.update_many({"status": "nothing"}, {"status": "x"}) == 0


def test_update_many_refuses_managed_fields(jobs):
    _fill(jobs, 2)
    with pytest.raises(ValueError):
        jobs.update_many({}, {"version": 5})
    assert jobs.count({"status": "ready"}) == 2


def test_delete_many(jobs):
    _fill(jobs, 6)
    assert jobs.delete_many({"id": AnyOf(["j000", "j001", "zzz"])}) == 2
    assert jobs.delete_many({"due": Range(gte="2026-01-01T00:04")}) == 2
    assert jobs.count({}) == 2
    assert jobs.get("j002") is not None and jobs.get("j003") is not None
    assert jobs.delete_many({"status": "nothing"}) == 0
    assert jobs.delete_many({}) == 2
    assert jobs.count({}) == 0
