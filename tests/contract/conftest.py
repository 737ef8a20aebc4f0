"""The storage contract suite: every test runs against every adapter.

``store`` is parametrized over SQLite (a fresh file), mongomock (in-memory MongoDB
emulation) and a real MongoDB (only when ``MONGODB_URL`` is set; a fresh database per test,
dropped afterwards). Features mongomock does not emulate are skipped on it, naming what is
missing (:func:`needs`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventpost.settings import Settings
from eventpost.storage import CollectionSpec, Store

BACKENDS = ["sqlite", "mongomock", "mongodb"]

#: What mongomock 4.3 cannot do, per feature a test needs.
MONGOMOCK_LACKS = {
    "text": "mongomock: no $text search (text indexes are not emulated)",
    "geo": "mongomock: no $geoWithin/$centerSphere nor the trigonometric aggregation "
    "operators the distance is computed with",
    "transactions": "mongomock: no sessions, so no multi-document transactions",
    "processes": "mongomock: in-memory, one process only",
    "threads": "mongomock: not thread-safe (find_one_and_update and unique checks are not "
    "atomic across threads)",
    "bool-vs-number": "mongomock: compares true == 1 as Python does (MongoDB does not)",
}

EVENTS = CollectionSpec(
    name="events",
    unique=(("slug",),),
    indexes=(("starts_at",), ("place.city",)),
    array_fields=("topics",),
    text_fields=("title", "description"),
    geo_field="place",
)
PEOPLE = CollectionSpec(
    name="people",
    unique=(("email",), ("team", "number")),
    indexes=(("status", "due"),),
)


class ManualClock:
    """A clock (epoch seconds) that moves only when told to."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def backend_of(store: Store) -> str:
    return getattr(store, "_test_backend", "sqlite")


def needs(store: Store, feature: str) -> None:
    """Skip the calling test when ``store`` cannot do ``feature``."""
    backend = backend_of(store)
    if backend == "mongomock" and feature in MONGOMOCK_LACKS:
        pytest.skip(MONGOMOCK_LACKS[feature])
    transactions = backend == "mongodb" and feature == "transactions"
    if transactions and not store.supports_transactions():
        pytest.skip("mongodb: a standalone server has no multi-document transactions")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _mongodb_url() -> str | None:
    return Settings.from_env().mongodb_url


def _teach_mongomock_type_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """mongomock 4.3 evaluates ``$type`` with one type only; MongoDB also takes a list
    (the unique indexes' partial filters use one). Extend the emulation, not the adapter."""
    from mongomock import filtering

    single = filtering._type_op

    def any_type(doc_val, search_val, in_array=False):  # type: ignore[no-untyped-def]
        if isinstance(search_val, list):
            return any(single(doc_val, one, in_array) for one in search_val)
        return single(doc_val, search_val, in_array)

    monkeypatch.setitem(filtering._filterer_inst._operator_map, "$type", any_type)


@pytest.fixture(params=BACKENDS)
def store(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Store]:
    backend = request.param
    if backend == "sqlite":
        from eventpost.storage.sqlite import SqliteStore

        opened: Store = SqliteStore(tmp_path / "store.sqlite3", synchronous="NORMAL", clock=clock)
    elif backend == "mongomock":
        mongomock = pytest.importorskip("mongomock")
        _teach_mongomock_type_lists(monkeypatch)
        MongoStore = pytest.importorskip("eventpost.storage.mongo").MongoStore

        opened = MongoStore(
            "mongodb://mongomock.invalid",
            database=f"eventpost_test_{uuid.uuid4().hex[:12]}",
            clock=clock,
            client_factory=mongomock.MongoClient,
        )
    else:
        url = _mongodb_url()
        if not url:
            pytest.skip("mongodb: MONGODB_URL is not set")
        MongoStore = pytest.importorskip("eventpost.storage.mongo").MongoStore

        opened = MongoStore(url, database=f"eventpost_test_{uuid.uuid4().hex[:12]}", clock=clock)
    opened._test_backend = backend  # type: ignore[attr-defined]
    try:
        yield opened
    finally:
        if backend == "mongodb":
            opened.drop_database()  # type: ignore[attr-defined]
        opened.close()


@pytest.fixture
def events(store: Store):  # type: ignore[no-untyped-def]
    return store.collection(EVENTS)


@pytest.fixture
def people(store: Store):  # type: ignore[no-untyped-def]
    return store.collection(PEOPLE)
