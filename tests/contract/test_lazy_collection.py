"""LazyCollection: opens its collection on first use, once, and is the port in every way."""

from __future__ import annotations

import pytest

from eventpost.storage import LazyCollection, Query, Store
from tests.contract.conftest import PEOPLE


def test_the_collection_opens_on_first_use_once_and_serves_every_method(
    store: Store, monkeypatch: pytest.MonkeyPatch
):
    opened = []
    collection = store.collection
    monkeypatch.setattr(store, "collection", lambda spec: opened.append(spec) or collection(spec))
    people = LazyCollection(store, PEOPLE)
    assert opened == []
    assert people.insert({"id": "p1", "email": "a@x.org", "status": "new"})["version"] == 1
    assert opened == [PEOPLE]
    people.insert({"id": "p2", "email": "b@x.org", "status": "new"})
    assert people.get("p1")["email"] == "a@x.org"
    assert people.update("p1", {"status": "seen"}, expected_version=1)["version"] == 2
    assert [d["id"] for d in people.find(Query(sort=(("email", 1),))).items] == ["p1", "p2"]
    assert people.find_one({"status": "seen"})["id"] == "p1"
    assert people.count({"status": "new"}) == 1
    assert people.claim({"status": "new"}, {"status": "taken"})["id"] == "p2"
    assert people.update_many({"status": "taken"}, {"status": "done"}) == 1
    assert people.delete("p1", expected_version=2) is True
    assert people.delete_many({"status": "done"}) == 1
    assert people.count({}) == 0
    assert opened == [PEOPLE]


def test_input_is_checked_before_anything_opens(store: Store, monkeypatch: pytest.MonkeyPatch):
    opened = []
    monkeypatch.setattr(store, "collection", opened.append)
    people = LazyCollection(store, PEOPLE)
    with pytest.raises(ValueError):
        people.insert({"id": "p1", "_reserved": 1})
    with pytest.raises(ValueError):
        people.update("p1", {"version": 3})
    with pytest.raises(ValueError):
        people.find(Query(limit=0))
    assert opened == []
