"""Single documents: insert, get, update, delete, versions and unique constraints."""

from __future__ import annotations

import threading

import pytest

from eventpost.storage import DuplicateKey, NotFound, VersionConflict
from tests.contract.conftest import needs


def test_insert_sets_version_1_and_get_returns_the_document(events):
    stored = events.insert({"id": "e1", "title": "Jazz night", "place": {"city": "Paris"}})
    assert stored == {"id": "e1", "title": "Jazz night", "place": {"city": "Paris"}, "version": 1}
    assert events.get("e1") == stored
    assert events.get("nope") is None


def test_version_of_follows_the_document_through_its_life(events):
    assert events.version_of("e1") is None
    events.insert({"id": "e1", "title": "Jazz night"})
    assert events.version_of("e1") == 1
    events.update("e1", {"title": "Jazz evening"})
    events.update("e1", {"title": "Jazz late"})
    assert events.version_of("e1") == events.get("e1")["version"] == 3
    events.delete("e1")
    assert events.version_of("e1") is None


def test_insert_ignores_a_given_version(events):
    assert events.insert({"id": "e1", "version": 7})["version"] == 1
    assert events.get("e1")["version"] == 1


def test_returned_documents_are_copies(events):
    doc = {"id": "e1", "topics": ["jazz"]}
    stored = events.insert(doc)
    stored["topics"].append("rock")
    doc["topics"].append("folk")
    assert events.get("e1")["topics"] == ["jazz"]


@pytest.mark.parametrize(
    "doc",
    [{}, {"id": ""}, {"id": 5}, {"id": "x", "_id": "y"}, {"id": "x", "$set": 1}],
    ids=["no id", "empty id", "int id", "_id field", "$ field"],
)
def test_insert_refuses_invalid_documents(events, doc):
    with pytest.raises(ValueError):
        events.insert(doc)
    assert events.count({}) == 0


def test_insert_refuses_values_json_cannot_hold(events):
    with pytest.raises(ValueError):
        events.insert({"id": "x", "score": float("nan")})
    assert events.get("x") is None


def test_duplicate_id_is_a_duplicate_key_on_id(events):
    events.insert({"id": "e1", "title": "first"})
    with pytest.raises(DuplicateKey) as info:
        events.insert({"id": "e1", "title": "second"})
    assert info.value.fields == ("id",)
    assert events.get("e1")["title"] == "first"


def test_unique_field(people):
    people.insert({"id": "p1", "email": "a@x.org"})
    with pytest.raises(DuplicateKey) as info:
        people.insert({"id": "p2", "email": "a@x.org"})
    assert info.value.fields == ("email",)
    assert people.get("p2") is None
    people.insert({"id": "p3", "email": "b@x.org"})


def test_compound_unique_fields(people):
    people.insert({"id": "p1", "team": "red", "number": 7})
    people.insert({"id": "p2", "team": "blue", "number": 7})
    people.insert({"id": "p3", "team": "red", "number": 8})
    with pytest.raises(DuplicateKey) as info:
        people.insert({"id": "p4", "team": "red", "number": 7})
    assert info.value.fields == ("team", "number")


def test_unique_leaves_missing_and_null_values_unconstrained(people):
    people.insert({"id": "p1"})
    people.insert({"id": "p2"})
    people.insert({"id": "p3", "email": None})
    people.insert({"id": "p4", "email": None})
    people.insert({"id": "p5", "team": "red", "number": None})
    people.insert({"id": "p6", "team": "red", "number": None})
    people.insert({"id": "p7", "team": "red"})
    assert people.count({}) == 7


def test_update_to_a_taken_unique_value_changes_nothing(people):
    people.insert({"id": "p1", "email": "a@x.org"})
    people.insert({"id": "p2", "email": "b@x.org"})
    with pytest.raises(DuplicateKey) as info:
        people.update("p2", {"email": "a@x.org"})
    assert info.value.fields == ("email",)
    assert people.get("p2") == {"id": "p2", "email": "b@x.org", "version": 1}


def test_concurrent_inserts_of_one_unique_value_exactly_one_wins(store, people):
    needs(store, "threads")
    results: list[str] = []
    barrier = threading.Barrier(6)

    def sign_up(n: int) -> None:
        barrier.wait()
        try:
            people.insert({"id": f"p{n}", "email": "same@x.org"})
            results.append("won")
        except DuplicateKey:
            results.append("duplicate")

    threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == ["duplicate"] * 5 + ["won"]
    assert people.count({"email": "same@x.org"}) == 1


def test_update_sets_top_level_fields_and_bumps_the_version(events):
    events.insert({"id": "e1", "title": "a", "place": {"city": "Paris"}, "note": "x"})
    updated = events.update("e1", {"title": "b", "place": {"city": "Lyon"}, "note": None})
    assert updated == {
        "id": "e1",
        "title": "b",
        "place": {"city": "Lyon"},
        "note": None,
        "version": 2,
    }
    assert events.get("e1") == updated
    assert events.update("e1", {"extra": [1, 2]})["version"] == 3


def test_update_with_expected_version(events):
    events.insert({"id": "e1", "title": "a"})
    assert events.update("e1", {"title": "b"}, expected_version=1)["version"] == 2
    with pytest.raises(VersionConflict):
        events.update("e1", {"title": "c"}, expected_version=1)
    assert events.get("e1") == {"id": "e1", "title": "b", "version": 2}


def test_update_of_a_missing_document_is_not_found(events):
    with pytest.raises(NotFound):
        events.update("nope", {"title": "x"})
    assert events.get("nope") is None


@pytest.mark.parametrize("changes", [{"id": "other"}, {"version": 9}, {"a.b": 1}, {"_x": 1}])
def test_update_refuses_changing_managed_or_nested_fields(events, changes):
    events.insert({"id": "e1"})
    with pytest.raises(ValueError):
        events.update("e1", changes)
    assert events.get("e1") == {"id": "e1", "version": 1}


def test_delete(events):
    events.insert({"id": "e1"})
    assert events.delete("e1") is True
    assert events.get("e1") is None
    assert events.delete("e1") is False


def test_delete_with_expected_version(events):
    events.insert({"id": "e1"})
    events.update("e1", {"title": "x"})
    with pytest.raises(VersionConflict):
        events.delete("e1", expected_version=1)
    assert events.get("e1") is not None
    assert events.delete("e1", expected_version=2) is True


def test_a_deleted_id_can_be_inserted_again(events):
    events.insert({"id": "e1", "slug": "s", "topics": ["a"]})
    events.delete("e1")
    again = events.insert({"id": "e1", "slug": "s", "topics": ["b"]})
    assert again["version"] == 1
    assert events.count({"topics": "a"}) == 0
    assert events.count({"topics": "b"}) == 1


def test_collection_is_idempotent(store, events):
    from tests.contract.conftest import EVENTS

    events.insert({"id": "e1", "slug": "s"})
    again = store.collection(EVENTS)
    assert again.get("e1")["slug"] == "s"
    with pytest.raises(DuplicateKey):
        again.insert({"id": "e2", "slug": "s"})


def test_ping(store):
    store.ping()
