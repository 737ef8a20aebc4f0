"""The MongoDB query documents the Mongo adapter sends (what mongomock cannot check for us:
text search and the near pipeline's shape)."""

from __future__ import annotations

import math

from eventpost.storage import AnyOf, CollectionSpec, Near, Range
from eventpost.storage._mongo_query import (
    after_filter,
    geo_prefilter,
    mongo_sort,
    text_filter,
    where_filter,
)

SPEC = CollectionSpec(name="events", array_fields=("topics",))


def test_where_filter():
    where = {
        "id": AnyOf(["a", "b"]),
        "topics": Range(gte="a", lt="c"),
        "place.city": None,
        "starts_at": Range(gte="2026"),
        "price": Range(),
        "status": "open",
    }
    assert where_filter(SPEC, where) == {
        "_id": {"$in": ["a", "b"]},
        "topics": {"$elemMatch": {"$gte": "a", "$lt": "c"}},
        "place.city": None,
        "starts_at": {"$gte": "2026"},
        "status": "open",
    }


def test_text_filter_quotes_every_word():
    assert text_filter('jazz -rock "night" OR $x') == {
        "$text": {"$search": '"jazz" "rock" "night" "OR" "x"'}
    }


def test_geo_prefilter_is_a_slightly_wider_cap():
    cap = geo_prefilter(Near(48.0, 2.0, 10))["_geo"]["$geoWithin"]["$centerSphere"]
    assert cap[0] == [2.0, 48.0]
    assert cap[1] > 10 / 6371.0088
    assert cap[1] < 10.001 / 6371.0088
    assert geo_prefilter(Near(0, 0, math.pi * 6371.0088)) == {"_geo": {"$exists": True}}


def test_sort_and_keyset():
    sort = (("starts_at", 1), ("distance", -1), ("id", -1))
    assert mongo_sort(sort) == [("starts_at", 1), ("_distance", -1), ("_id", -1)]
    assert after_filter(sort, ["2026", 1.5, "e1"]) == {
        "$or": [
            {"starts_at": {"$gt": "2026"}},
            {
                "$and": [
                    {"starts_at": "2026"},
                    {"$or": [{"_distance": {"$lt": 1.5}}, {"_distance": None}]},
                ]
            },
            {
                "$and": [
                    {"starts_at": "2026"},
                    {"_distance": 1.5},
                    {"$or": [{"_id": {"$lt": "e1"}}, {"_id": None}]},
                ]
            },
        ]
    }


def test_keyset_after_a_missing_value():
    ascending = (("due", 1), ("id", 1))
    assert after_filter(ascending, [None, "e1"]) == {
        "$or": [{"due": {"$ne": None}}, {"$and": [{"due": None}, {"_id": {"$gt": "e1"}}]}]
    }
    descending = (("due", -1), ("id", -1))
    assert after_filter(descending, [None, "e1"]) == {
        "$or": [{"$and": [{"due": None}, {"$or": [{"_id": {"$lt": "e1"}}, {"_id": None}]}]}]
    }
