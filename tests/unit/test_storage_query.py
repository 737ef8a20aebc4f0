"""The backend-neutral storage helpers: checks, sorting, cursors, words, geometry."""

from __future__ import annotations

import math
import random

import pytest

from eventpost.geo import haversine_km
from eventpost.storage import CollectionSpec, InvalidCursor, Near, Query
from eventpost.storage._query import (
    FindRequest,
    bounding_boxes,
    check_changes,
    check_field,
    check_new_document,
    check_spec,
    decode_cursor,
    encode_cursor,
    geo_point,
    normalize_sort,
    text_words,
    time_seconds,
)


@pytest.mark.parametrize("path", ["a", "place.lat", "a_b.c2", "x._y"])
def test_valid_field_paths(path):
    assert check_field(path) == path


@pytest.mark.parametrize("path", ["", "_a", "a..b", "a.", "a b", "a'b", "a-b", "$a", "1a", 3])
def test_invalid_field_paths(path):
    with pytest.raises(ValueError):
        check_field(path)


@pytest.mark.parametrize("name", ["outbox", "sqlite", "a__b", "_x", "x-y", "1x", "a b", "x_"])
def test_invalid_collection_names(name):
    with pytest.raises(ValueError):
        check_spec(CollectionSpec(name=name))


def test_a_spec_with_an_invalid_field_is_refused():
    with pytest.raises(ValueError):
        check_spec(CollectionSpec(name="ok", indexes=(("bad field",),)))
    with pytest.raises(ValueError):
        check_spec(CollectionSpec(name="ok", unique=((),)))


def test_new_documents_and_changes():
    assert check_new_document({"id": "a", "version": 4, "x": 1}) == {"id": "a", "x": 1}
    assert check_changes({"x": None}) == {"x": None}
    for bad in ({"id": "b"}, {"version": 2}, {"a.b": 1}, {"$set": 1}, {"_geo": 1}):
        with pytest.raises(ValueError):
            check_changes(bad)


def test_sort_gets_id_as_the_last_tie_breaker():
    assert normalize_sort(Query()) == (("id", 1),)
    assert normalize_sort(Query(sort=(("a", -1),))) == (("a", -1), ("id", -1))
    assert normalize_sort(Query(sort=(("a", 1), ("b", -1)))) == (("a", 1), ("b", -1), ("id", -1))
    assert normalize_sort(Query(sort=(("id", -1), ("a", 1)))) == (("id", -1),)
    near = Near(0, 0, 1)
    assert normalize_sort(Query(near=near, sort=(("distance", 1),))) == (
        ("distance", 1),
        ("id", 1),
    )


@pytest.mark.parametrize("sort", [(("a", 0),), (("a", "asc"),), (("distance", 1),), (("a b", 1),)])
def test_bad_sorts(sort):
    with pytest.raises(ValueError):
        normalize_sort(Query(sort=sort))


def test_cursor_round_trip():
    sort = (("starts_at", 1), ("distance", 1), ("id", 1))
    values = ["2026-01-01T00:00:00.000000Z", 1.2345678901234567, "e1"]
    cursor = encode_cursor(sort, values)
    assert "=" not in cursor and "+" not in cursor and "/" not in cursor
    assert decode_cursor(cursor, sort) == values
    assert decode_cursor(encode_cursor(sort, [None, 0.1, "x"]), sort) == [None, 0.1, "x"]


def test_cursors_of_another_sort_or_tampered_are_invalid():
    sort = (("a", 1), ("id", 1))
    cursor = encode_cursor(sort, ["x", "e1"])
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor, (("a", -1), ("id", -1)))
    for bad in [
        cursor[:-3],
        "!!!",
        "",
        encode_cursor(sort, ["x"]),
        encode_cursor(sort, [[1], "e"]),
    ]:
        with pytest.raises(InvalidCursor):
            decode_cursor(bad, sort)
    with pytest.raises(InvalidCursor):
        decode_cursor(encode_cursor(sort, ["x", 5]), sort)  # the id is a string


def test_text_words():
    assert text_words("Jazz  night!") == ["Jazz", "night"]
    assert text_words('"*:^()$.[]|\\') == []
    assert text_words("rock AND roll OR NOT") == ["rock", "AND", "roll", "OR", "NOT"]
    assert text_words("a_b c-d e.f") == ["a", "b", "c", "d", "e", "f"]
    assert text_words("jazz jazz Jazz") == ["jazz", "Jazz"]
    assert text_words("café 2026") == ["café", "2026"]


def test_haversine():
    assert haversine_km(48.8566, 2.3522, 48.8566, 2.3522) == 0
    paris_london = haversine_km(48.8566, 2.3522, 51.5074, -0.1278)
    assert 343 < paris_london < 344
    assert haversine_km(51.5074, -0.1278, 48.8566, 2.3522) == pytest.approx(paris_london)
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371.0088)
    assert haversine_km(0, 179.9, 0, -179.9) == pytest.approx(0.2 * 111.195, rel=1e-3)


def test_geo_point():
    assert geo_point({"p": {"lat": 1, "lng": 2.5}}, "p") == (1.0, 2.5)
    assert geo_point({"a": {"p": {"lat": -90, "lng": 180}}}, "a.p") == (-90.0, 180.0)
    for bad in ({}, {"p": None}, {"p": {"lat": 1}}, {"p": {"lat": True, "lng": 1}},
                {"p": {"lat": "1", "lng": 1}}, {"p": {"lat": 91, "lng": 0}}):  # fmt: skip
        assert geo_point(bad, "p") is None


def _in_boxes(lat: float, lng: float, boxes) -> bool:
    return any(a <= lat <= b and c <= lng <= d for a, b, c, d in boxes)


def test_a_small_circle_has_one_box():
    boxes = bounding_boxes(Near(48.85, 2.35, 10))
    assert len(boxes) == 1
    min_lat, max_lat, west, east = boxes[0]
    assert max_lat - min_lat == pytest.approx(2 * 10 / 111.195, rel=1e-3)
    assert west < 2.35 < east


def test_a_circle_across_the_antimeridian_is_split():
    boxes = bounding_boxes(Near(-17.0, 179.95, 20))
    assert len(boxes) == 2
    assert _in_boxes(-17.0, 179.99, boxes)
    assert _in_boxes(-17.0, -179.9, boxes)
    assert not _in_boxes(-17.0, 0.0, boxes)
    west_side = bounding_boxes(Near(-17.0, -179.95, 20))
    assert _in_boxes(-17.0, 179.9, west_side)


def test_a_circle_over_a_pole_spans_every_longitude():
    (box,) = bounding_boxes(Near(89.95, 10.0, 20))
    assert box == (pytest.approx(box[0]), 90.0, -180.0, 180.0)
    (south,) = bounding_boxes(Near(-89.99, 0, 5))
    assert south[0] == -90.0 and south[2:] == (-180.0, 180.0)
    assert bounding_boxes(Near(0, 0, 15000)) == [(-90.0, 90.0, -180.0, 180.0)]


def test_every_point_inside_the_radius_is_inside_a_box():
    rng = random.Random(7)
    for _ in range(300):
        center = Near(
            rng.uniform(-90, 90), rng.uniform(-180, 180), rng.choice([0.5, 10, 300, 3000])
        )
        boxes = bounding_boxes(center)
        for _ in range(20):
            # a point at a random bearing, at up to the radius
            distance = center.radius_km * rng.random() ** 0.5
            bearing = rng.uniform(0, 2 * math.pi)
            lat, lng = _destination(center.lat, center.lng, distance, bearing)
            assert haversine_km(center.lat, center.lng, lat, lng) <= center.radius_km * 1.0001
            assert _in_boxes(lat, lng, boxes), (center, lat, lng)


def _destination(lat: float, lng: float, km: float, bearing: float) -> tuple[float, float]:
    angle = km / 6371.0088
    phi1, lmb1 = math.radians(lat), math.radians(lng)
    phi2 = math.asin(
        math.sin(phi1) * math.cos(angle) + math.cos(phi1) * math.sin(angle) * math.cos(bearing)
    )
    lmb2 = lmb1 + math.atan2(
        math.sin(bearing) * math.sin(angle) * math.cos(phi1),
        math.cos(angle) - math.sin(phi1) * math.sin(phi2),
    )
    lng2 = (math.degrees(lmb2) + 540) % 360 - 180
    return math.degrees(phi2), lng2


def test_time_seconds_of_canonical_times_only():
    assert time_seconds("1970-01-01T00:00:00.000000Z") == 0
    assert time_seconds("2026-01-10T20:00:00.999999Z") == 1768075200
    assert time_seconds("1969-12-31T23:59:59.500000Z") == -1
    for value in (
        "2026-02-30T20:00:00.000000Z",  # no such day
        "2026-01-10T24:00:00.000000Z",
        "2026-01-10T20:00:00Z",
        "2026-01-10",
        "2026-01-10T20:00:00.000000Z\n",
        "2026-01-10T20:00:00.000000+00:00",
        1768075200,
        None,
    ):
        assert time_seconds(value) is None, value


def test_canonical_times_sort_as_their_seconds():
    rng = random.Random(4)
    times = [
        f"{rng.randint(1, 9999):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}."
        f"{rng.randint(0, 999999):06d}Z"
        for _ in range(500)
    ]
    seconds = [time_seconds(t) for t in sorted(times)]
    assert seconds == sorted(seconds)


def test_geo_time_field_needs_a_geo_field():
    with pytest.raises(ValueError):
        check_spec(CollectionSpec(name="x", geo_time_field="starts_at"))
    with pytest.raises(ValueError):
        check_spec(CollectionSpec(name="x", geo_field="place", geo_time_field="a b"))
    spec = CollectionSpec(name="x", geo_field="place", geo_time_field="starts_at")
    assert check_spec(spec) is spec


# -- FindRequest: a query once checked ------------------------------------------------------

PLAIN = CollectionSpec("plain")
SEARCHABLE = CollectionSpec("searchable", text_fields=("title",), geo_field="place")


def test_a_find_request_holds_the_full_sort_the_cursor_and_the_words():
    cursor = encode_cursor((("title", -1), ("id", -1)), ["b", "x2"])
    query = Query(text="Jazz night, jazz!", sort=(("title", -1),), cursor=cursor, limit=3)
    request = FindRequest.of(query, SEARCHABLE)
    assert request is not None
    assert request.sort == (("title", -1), ("id", -1))
    assert request.after == ["b", "x2"]
    assert request.words == ["Jazz", "night", "jazz"]
    assert request.limit == 3


def test_a_text_without_words_is_no_request():
    assert FindRequest.of(Query(text="*?"), SEARCHABLE) is None


@pytest.mark.parametrize(
    "query",
    [Query(text="jazz"), Query(near=Near(0, 0, 1)), Query(limit=0), Query(where={"a": [1]})],
    ids=["text without text_fields", "near without geo_field", "limit", "filter on a list"],
)
def test_a_query_the_collection_cannot_answer_is_refused(query):
    with pytest.raises(ValueError):
        FindRequest.of(query, PLAIN)


def test_a_page_holds_the_limit_and_a_cursor_after_its_last_row():
    request = FindRequest.of(Query(sort=(("n", 1),), limit=2), PLAIN)
    assert request is not None
    rows = [(1, "a"), (2, "b"), (3, "c")]
    page = request.page(rows, lambda r: {"id": r[1]}, lambda r: r)
    assert page.items == [{"id": "a"}, {"id": "b"}]
    assert decode_cursor(page.next_cursor, request.sort) == [2, "b"]
    last = request.page(rows[:2], lambda r: {"id": r[1]}, lambda r: r)
    assert last.next_cursor is None
