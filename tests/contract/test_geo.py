"""Near queries: radius, distance, sort by distance, antimeridian and poles."""

from __future__ import annotations

import math

import pytest

from eventpost.storage import AnyOf, CollectionSpec, Near, Query, Range
from tests.contract.conftest import needs

PARIS = (48.8566, 2.3522)


def reference_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance from the angle between unit vectors (independent of the
    haversine the adapters use)."""

    def unit(lat: float, lng: float) -> tuple[float, float, float]:
        phi, lmb = math.radians(lat), math.radians(lng)
        return (math.cos(phi) * math.cos(lmb), math.cos(phi) * math.sin(lmb), math.sin(phi))

    a, b = unit(lat1, lng1), unit(lat2, lng2)
    cross = (
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    )
    angle = math.atan2(math.hypot(*cross), sum(x * y for x, y in zip(a, b, strict=True)))
    return 6371.0088 * angle


def offset(lat: float, lng: float, km_north: float, km_east: float) -> tuple[float, float]:
    return (
        lat + km_north / 111.195,
        lng + km_east / (111.195 * math.cos(math.radians(lat))),
    )


@pytest.fixture
def places(store, events):
    needs(store, "geo")
    points = {
        "center": PARIS,
        "n2": offset(*PARIS, 2, 0),
        "e5": offset(*PARIS, 0, 5),
        "s9": offset(*PARIS, -9, 0),
        "w12": offset(*PARIS, 0, -12),
        "ne30": offset(*PARIS, 21, 21),
        "lyon": (45.764, 4.8357),
    }
    for n, (doc_id, (lat, lng)) in enumerate(points.items()):
        events.insert(
            {
                "id": doc_id,
                "starts_at": f"2026-01-{10 - n:02d}T20:00:00.000000Z",
                "topics": ["jazz"] if n % 2 == 0 else ["rock"],
                "place": {"name": doc_id, "lat": lat, "lng": lng},
            }
        )
    events.insert({"id": "nowhere", "starts_at": "2026-01-01T00:00:00.000000Z"})
    events.insert({"id": "bad", "place": {"name": "no coordinates"}})
    return events


def near_ids(coll, near: Near, **query) -> list[str]:
    return [doc["id"] for doc in coll.find(Query(near=near, limit=50, **query)).items]


def test_only_points_inside_the_radius(places):
    assert sorted(near_ids(places, Near(*PARIS, 10))) == ["center", "e5", "n2", "s9"]
    assert sorted(near_ids(places, Near(*PARIS, 1))) == ["center"]
    assert sorted(near_ids(places, Near(*PARIS, 13))) == ["center", "e5", "n2", "s9", "w12"]
    assert len(near_ids(places, Near(*PARIS, 500))) == 7


def test_distance_km_is_the_great_circle_distance(places):
    page = places.find(Query(near=Near(*PARIS, 1000), limit=50))
    assert len(page.items) == 7
    for doc in page.items:
        expected = reference_km(*PARIS, doc["place"]["lat"], doc["place"]["lng"])
        assert doc["distance_km"] == pytest.approx(expected, rel=0.005, abs=1e-6)
    lyon = next(d for d in page.items if d["id"] == "lyon")
    assert 390 < lyon["distance_km"] < 394


def test_sort_by_distance_nearest_first(places):
    order = near_ids(places, Near(*PARIS, 1000), sort=(("distance", 1),))
    assert order == ["center", "n2", "e5", "s9", "w12", "ne30", "lyon"]
    farthest = near_ids(places, Near(*PARIS, 1000), sort=(("distance", -1),))
    assert farthest == list(reversed(order))


def test_near_with_filters_and_another_sort(places):
    query = Query(
        near=Near(*PARIS, 20),
        where={"topics": AnyOf(["jazz"]), "starts_at": Range(gte="2026-01-05T00:00:00.000000Z")},
        sort=(("starts_at", 1),),
    )
    assert [d["id"] for d in places.find(query).items] == ["w12", "e5", "center"]


def test_pages_sorted_by_distance(places):
    query = Query(near=Near(*PARIS, 1000), sort=(("distance", 1),), limit=3)
    seen = []
    cursor = None
    while True:
        page = places.find(Query(**{**query.__dict__, "cursor": cursor}))
        seen += [d["id"] for d in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == ["center", "n2", "e5", "s9", "w12", "ne30", "lyon"]


def test_equal_distances_page_by_id(store, events):
    needs(store, "geo")
    for doc_id in ["c", "a", "d", "b"]:
        events.insert({"id": doc_id, "place": {"lat": 10.0, "lng": 20.0}})
    query = Query(near=Near(10.0, 20.1, 50), sort=(("distance", 1),), limit=2)
    first = events.find(query)
    second = events.find(Query(**{**query.__dict__, "cursor": first.next_cursor}))
    assert [d["id"] for d in first.items + second.items] == ["a", "b", "c", "d"]


def test_near_follows_updates_and_deletes(places):
    places.update("lyon", {"place": {"name": "moved", "lat": PARIS[0], "lng": PARIS[1]}})
    places.delete("n2")
    assert sorted(near_ids(places, Near(*PARIS, 1))) == ["center", "lyon"]


def test_across_the_antimeridian(store, events):
    needs(store, "geo")
    events.insert({"id": "east", "place": {"lat": -17.0, "lng": 179.9}})
    events.insert({"id": "west", "place": {"lat": -17.0, "lng": -179.9}})
    events.insert({"id": "far", "place": {"lat": -17.0, "lng": 170.0}})
    found = events.find(Query(near=Near(-17.0, -179.9, 25), sort=(("distance", 1),)))
    assert [d["id"] for d in found.items] == ["west", "east"]
    east = found.items[1]
    assert east["distance_km"] == pytest.approx(reference_km(-17, -179.9, -17, 179.9), rel=0.005)
    assert [d["id"] for d in events.find(Query(near=Near(-17.0, 179.95, 20))).items] == [
        "east",
        "west",
    ]


def test_near_a_pole(store, events):
    needs(store, "geo")
    events.insert({"id": "a", "place": {"lat": 89.95, "lng": 0.0}})
    events.insert({"id": "b", "place": {"lat": 89.95, "lng": 180.0}})
    events.insert({"id": "c", "place": {"lat": 89.9, "lng": -90.0}})
    events.insert({"id": "pole", "place": {"lat": 90.0, "lng": 0.0}})
    events.insert({"id": "south", "place": {"lat": 88.0, "lng": 45.0}})
    found = events.find(Query(near=Near(89.99, 90.0, 20), sort=(("distance", 1),)))
    assert sorted(d["id"] for d in found.items) == ["a", "b", "c", "pole"]
    for doc in found.items:
        expected = reference_km(89.99, 90.0, doc["place"]["lat"], doc["place"]["lng"])
        assert doc["distance_km"] == pytest.approx(expected, rel=0.005)


def test_near_needs_a_valid_point(places):
    with pytest.raises(ValueError):
        places.find(Query(near=Near(91, 0, 10)))
    with pytest.raises(ValueError):
        places.find(Query(near=Near(0, 0, -1)))


# -- near + a time range on a collection whose geo index has a time dimension ---------------

GIGS = CollectionSpec(
    name="gigs",
    indexes=(("starts_at",),),
    array_fields=("topics",),
    geo_field="place",
    geo_time_field="starts_at",
)
T0 = "2026-03-01T20:00:00.000000Z"
T1 = "2026-03-02T20:00:00.000000Z"
T2 = "2026-03-03T20:00:00.000000Z"


@pytest.fixture
def gigs(store):
    needs(store, "geo")
    coll = store.collection(GIGS)
    rows = [
        ("at-t0", PARIS, T0),
        ("at-t1", offset(*PARIS, 1, 0), T1),
        ("at-t1-later", offset(*PARIS, 2, 0), "2026-03-02T20:00:00.000001Z"),
        ("at-t2", offset(*PARIS, 3, 0), T2),
        ("far-t1", offset(*PARIS, 40, 0), T1),
        ("null-time", offset(*PARIS, 1, 1), None),
        ("short-time", offset(*PARIS, 1, 2), "2026-03-02"),
        ("no-such-day", offset(*PARIS, 1, 3), "2026-02-30T20:00:00.000000Z"),
    ]
    for doc_id, (lat, lng), starts_at in rows:
        coll.insert(
            {
                "id": doc_id,
                "starts_at": starts_at,
                "topics": ["jazz"],
                "place": {"lat": lat, "lng": lng},
            }
        )
    coll.insert({"id": "missing-time", "topics": ["jazz"], "place": {"lat": PARIS[0], "lng": 2.36}})
    return coll


def gig_ids(coll, starts_at: Range | None = None, radius_km: float = 10, **query) -> list[str]:
    where = {"starts_at": starts_at} if starts_at is not None else {}
    page = coll.find(Query(where=where, near=Near(*PARIS, radius_km), limit=50, **query))
    return [doc["id"] for doc in page.items]


def test_time_range_bounds_inclusive_and_exclusive(gigs):
    by_start = (("starts_at", 1),)
    assert gig_ids(gigs, Range(gte=T1, lte=T2), sort=by_start) == ["at-t1", "at-t1-later", "at-t2"]
    assert gig_ids(gigs, Range(gt=T1, lt=T2), sort=by_start) == ["at-t1-later"]
    assert gig_ids(gigs, Range(gte=T0, lt=T1), sort=by_start) == ["at-t0", "short-time"]
    assert gig_ids(gigs, Range(gt=T0, lte=T1), sort=by_start) == ["short-time", "at-t1"]
    assert gig_ids(gigs, Range(gte=T1, lte=T1), sort=by_start) == ["at-t1"]
    assert gig_ids(gigs, Range(gt=T1, lt=T1)) == []
    assert gig_ids(gigs, Range(gte=T2, lte=T0)) == []


def test_time_range_with_one_bound_or_non_canonical_bounds(gigs):
    by_start = (("starts_at", 1),)
    assert gig_ids(gigs, Range(gte=T2), sort=by_start) == ["at-t2"]
    assert gig_ids(gigs, Range(lt=T0), sort=by_start) == ["no-such-day"]
    # 2026-02-30 is no day, but as a string it lies between these
    late_february = Range(gte="2026-02-28T00:00:00.000000Z", lt="2026-03-01T00:00:00.000000Z")
    assert gig_ids(gigs, late_february) == ["no-such-day"]
    # bounds that are not canonical times still compare as strings
    assert gig_ids(gigs, Range(gte="2026-03-02", lt="2026-03-03"), sort=by_start) == [
        "short-time",
        "at-t1",
        "at-t1-later",
    ]
    assert gig_ids(
        gigs, Range(gte="2026-03-02T20:00:00.000000Z", lt="2026-03-03"), sort=by_start
    ) == [
        "at-t1",
        "at-t1-later",
    ]


def test_documents_without_a_time_are_found_without_a_time_range(gigs):
    timed = ["at-t0", "at-t1", "at-t1-later", "at-t2", "short-time", "no-such-day"]
    assert sorted(gig_ids(gigs)) == sorted([*timed, "null-time", "missing-time"])
    assert (
        gig_ids(gigs, Range(gte="0000", lte="9999"), sort=(("starts_at", 1),))[0] == "no-such-day"
    )
    found = gig_ids(gigs, Range(gte="0001-01-01T00:00:00.000000Z"))
    assert "null-time" not in found and "missing-time" not in found


def test_time_range_sorted_by_distance_and_paged(gigs):
    query = Query(
        where={"starts_at": Range(gte=T0, lte=T2)},
        near=Near(*PARIS, 10),
        sort=(("distance", 1),),
        limit=2,
    )
    seen, cursor = [], None
    while True:
        page = gigs.find(Query(**{**query.__dict__, "cursor": cursor}))
        assert len(page.items) <= 2
        seen += [(doc["id"], doc["distance_km"]) for doc in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [i for i, _ in seen] == ["at-t0", "at-t1", "at-t1-later", "short-time", "at-t2"]
    assert [d for _, d in seen] == sorted(d for _, d in seen)


def test_time_range_follows_updates(gigs):
    gigs.update("at-t2", {"starts_at": T0})
    gigs.update("null-time", {"starts_at": T0})
    gigs.update("at-t0", {"starts_at": None})
    assert gig_ids(gigs, Range(gte=T0, lte=T0), sort=(("starts_at", 1),)) == ["at-t2", "null-time"]
    gigs.delete("at-t2")
    assert gig_ids(gigs, Range(gte=T0, lte=T0)) == ["null-time"]


def test_time_range_across_the_antimeridian(store):
    needs(store, "geo")
    coll = store.collection(GIGS)
    for doc_id, lng, starts_at in [
        ("east-in", 179.95, T1),
        ("west-in", -179.95, T1),
        ("west-early", -179.9, T0),
        ("east-late", 179.9, T2),
    ]:
        coll.insert({"id": doc_id, "starts_at": starts_at, "place": {"lat": -17.0, "lng": lng}})
    page = coll.find(
        Query(
            where={"starts_at": Range(gt=T0, lt=T2)},
            near=Near(-17.0, 180.0, 20),
            sort=(("starts_at", 1),),
        )
    )
    assert sorted(doc["id"] for doc in page.items) == ["east-in", "west-in"]
    page = coll.find(Query(where={"starts_at": Range(gte=T0)}, near=Near(-17.0, -180.0, 20)))
    assert sorted(doc["id"] for doc in page.items) == [
        "east-in",
        "east-late",
        "west-early",
        "west-in",
    ]
