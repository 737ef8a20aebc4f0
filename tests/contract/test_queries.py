"""Filters, sorting and cursor pagination."""

from __future__ import annotations

import pytest

from eventpost.storage import AnyOf, InvalidCursor, Query, Range
from tests.contract.conftest import needs


@pytest.fixture
def sample(events):
    docs = [
        {"id": "a", "title": "A", "starts_at": "2026-01-03T10:00:00.000000Z", "topics": ["jazz"],
         "place": {"city": "Paris"}, "price": 10, "free": False},
        {"id": "b", "title": "B", "starts_at": "2026-01-01T10:00:00.000000Z",
         "topics": ["rock", "jazz"], "place": {"city": "Lyon"}, "price": 0, "free": True},
        {"id": "c", "title": "C", "starts_at": "2026-01-02T10:00:00.000000Z", "topics": ["folk"],
         "place": {"city": "Paris"}, "price": 25.5, "free": False},
        {"id": "d", "title": "D", "starts_at": "2026-01-05T10:00:00.000000Z", "topics": [],
         "place": {"city": None}, "price": None},
        {"id": "e", "title": "E", "starts_at": "2026-01-04T10:00:00.000000Z", "topics": ["rock"],
         "price": 1},
    ]  # fmt: skip
    for doc in docs:
        events.insert(doc)
    return events


def ids(page_or_docs) -> list[str]:
    items = getattr(page_or_docs, "items", page_or_docs)
    return [doc["id"] for doc in items]


def found(coll, where, **query) -> list[str]:
    return sorted(ids(coll.find(Query(where=where, limit=100, **query))))


def test_equality_on_a_dotted_path(sample):
    assert found(sample, {"place.city": "Paris"}) == ["a", "c"]
    assert sample.count({"place.city": "Paris"}) == 2


def test_none_matches_missing_and_null(sample):
    assert found(sample, {"place.city": None}) == ["d", "e"]
    assert found(sample, {"price": None}) == ["d"]
    assert found(sample, {"nowhere": None}) == ["a", "b", "c", "d", "e"]


def test_any_of(sample):
    assert found(sample, {"place.city": AnyOf(["Lyon", "Nice"])}) == ["b"]
    assert found(sample, {"place.city": AnyOf(["Lyon", None])}) == ["b", "d", "e"]
    assert found(sample, {"id": AnyOf(["a", "e", "zz"])}) == ["a", "e"]
    assert found(sample, {"id": AnyOf([])}) == []


def test_ranges(sample):
    week = Range(gte="2026-01-02T10:00:00.000000Z", lt="2026-01-04T10:00:00.000000Z")
    assert found(sample, {"starts_at": week}) == ["a", "c"]
    assert found(sample, {"starts_at": Range(gt="2026-01-04T10:00:00.000000Z")}) == ["d"]
    assert found(sample, {"price": Range(gte=1, lte=10)}) == ["a", "e"]
    assert found(sample, {"price": Range(gt=0)}) == ["a", "c", "e"]
    assert found(sample, {"price": Range(lt=1)}) == ["b"]  # null is not in a range
    assert found(sample, {"price": Range()}) == ["a", "b", "c", "d", "e"]


def test_numbers_compare_as_numbers(sample):
    assert found(sample, {"price": 25.5}) == ["c"]
    assert found(sample, {"price": 10.0}) == ["a"]


def test_booleans_are_not_numbers(store, sample):
    assert found(sample, {"free": True}) == ["b"]
    assert found(sample, {"free": False}) == ["a", "c"]
    assert found(sample, {"price": 0}) == ["b"]
    needs(store, "bool-vs-number")
    assert found(sample, {"price": True}) == []


def test_array_fields_match_any_element(sample):
    assert found(sample, {"topics": "jazz"}) == ["a", "b"]
    assert found(sample, {"topics": AnyOf(["rock", "folk"])}) == ["b", "c", "e"]
    assert found(sample, {"topics": AnyOf(["nothing"])}) == []
    assert sample.count({"topics": "rock"}) == 2


def test_array_fields_follow_updates(sample):
    sample.update("c", {"topics": ["jazz", "blues"]})
    assert found(sample, {"topics": "jazz"}) == ["a", "b", "c"]
    assert found(sample, {"topics": "folk"}) == []
    assert found(sample, {"topics": "blues"}) == ["c"]


def test_several_conditions_all_apply(sample):
    where = {"topics": "jazz", "place.city": "Paris", "price": Range(gte=5)}
    assert found(sample, where) == ["a"]


def test_find_one_and_count(sample):
    assert sample.find_one({"place.city": "Lyon"})["id"] == "b"
    assert sample.find_one({"place.city": "Rome"}) is None
    assert sample.find_one({"topics": "folk"})["id"] == "c"
    assert sample.count({}) == 5
    assert sample.count({"topics": AnyOf(["jazz", "rock"])}) == 3


def test_filters_refuse_lists_and_objects(sample):
    with pytest.raises(ValueError):
        sample.find(Query(where={"topics": ["jazz"]}))
    with pytest.raises(ValueError):
        sample.count({"place": {"city": "Paris"}})
    with pytest.raises(ValueError):
        sample.count({"bad path!": 1})


def test_sort_ascending_and_descending(sample):
    by_start = sample.find(Query(sort=(("starts_at", 1),), limit=10))
    assert ids(by_start) == ["b", "c", "a", "e", "d"]
    assert by_start.next_cursor is None
    backwards = sample.find(Query(sort=(("starts_at", -1),), limit=10))
    assert ids(backwards) == ["d", "e", "a", "c", "b"]


def test_sort_ties_break_on_id(events):
    for doc_id in ["c", "a", "b"]:
        events.insert({"id": doc_id, "starts_at": "2026-01-01T00:00:00.000000Z"})
    assert ids(events.find(Query(sort=(("starts_at", 1),)))) == ["a", "b", "c"]
    assert ids(events.find(Query())) == ["a", "b", "c"]


def test_missing_values_sort_first_ascending_and_last_descending(sample):
    order = ids(sample.find(Query(sort=(("price", 1),), limit=10)))
    assert order == ["d", "b", "e", "a", "c"]
    assert ids(sample.find(Query(sort=(("price", -1),), limit=10))) == ["c", "a", "e", "b", "d"]


def _all_pages(coll, query: Query) -> tuple[list[str], int]:
    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        page = coll.find(Query(**{**query.__dict__, "cursor": cursor}))
        pages += 1
        seen += ids(page)
        cursor = page.next_cursor
        if cursor is None:
            return seen, pages
        assert len(page.items) == query.limit


@pytest.mark.parametrize(
    "sort",
    [(), (("starts_at", 1),), (("starts_at", -1),), (("price", 1),), (("price", -1),),
     (("place.city", 1), ("starts_at", -1)), (("id", -1),)],
    ids=["id", "start asc", "start desc", "price asc (nulls)", "price desc (nulls)",
         "city then start", "id desc"],
)  # fmt: skip
def test_pagination_has_no_duplicates_and_no_gaps(events, sort):
    for n in range(23):
        events.insert(
            {
                "id": f"e{n:02d}",
                "starts_at": f"2026-01-{n % 7 + 1:02d}T00:00:00.000000Z",
                "price": None if n % 5 == 0 else n % 4,
                "place": {"city": ["Paris", "Lyon", None][n % 3]},
            }
        )
    query = Query(sort=sort, limit=4)
    everything = ids(events.find(Query(sort=sort, limit=100)))
    seen, pages = _all_pages(events, query)
    assert seen == everything
    assert len(set(seen)) == 23
    assert pages == 6


def test_pagination_is_stable_while_documents_are_inserted(events):
    for n in range(0, 40, 2):
        events.insert({"id": f"e{n:02d}", "starts_at": f"2026-02-{n // 2 + 1:02d}T00:00"})
    query = Query(sort=(("starts_at", 1),), limit=5)
    seen: list[str] = []
    cursor = None
    inserted = 0
    while True:
        page = events.find(Query(**{**query.__dict__, "cursor": cursor}))
        seen += ids(page)
        # one new document before the cursor, one after it
        events.insert({"id": f"early{inserted}", "starts_at": "2026-01-01T00:00"})
        events.insert({"id": f"late{inserted}", "starts_at": "2026-03-01T00:00"})
        inserted += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    originals = [s for s in seen if s.startswith("e")]
    assert originals == [f"e{n:02d}" for n in range(0, 40, 2)]
    assert len(seen) == len(set(seen))
    assert not any(s.startswith("early") for s in seen)
    assert "late0" in seen  # inserted after the cursor position, so it shows up


def test_cursor_pagination_with_a_filter(sample):
    query = Query(where={"topics": AnyOf(["jazz", "rock"])}, sort=(("starts_at", 1),), limit=2)
    first = sample.find(query)
    assert ids(first) == ["b", "a"]
    second = sample.find(Query(**{**query.__dict__, "cursor": first.next_cursor}))
    assert ids(second) == ["e"]
    assert second.next_cursor is None


@pytest.mark.parametrize("cursor", ["garbage!", "e30", "eyJzIjpbXSwiayI6W119"])
def test_a_bad_cursor_is_invalid(sample, cursor):
    with pytest.raises(InvalidCursor):
        sample.find(Query(cursor=cursor))


def test_a_cursor_of_another_sort_is_invalid(sample):
    page = sample.find(Query(sort=(("starts_at", 1),), limit=1))
    with pytest.raises(InvalidCursor):
        sample.find(Query(sort=(("price", 1),), limit=1, cursor=page.next_cursor))
    with pytest.raises(ValueError):  # InvalidCursor is a ValueError too
        sample.find(Query(limit=1, cursor=page.next_cursor))


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(sample, limit):
    with pytest.raises(ValueError):
        sample.find(Query(limit=limit))


def test_sort_by_distance_needs_near(sample):
    with pytest.raises(ValueError):
        sample.find(Query(sort=(("distance", 1),)))
