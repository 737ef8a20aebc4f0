"""GET /v1/events on a real store: every filter alone and combined, checked against a
brute-force oracle; geo accuracy, radius and antimeridian; literal text; pagination."""

from __future__ import annotations

import itertools
import random
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from eventpost.geo import haversine_km
from eventpost.timeutil import format_time
from tests.integration.test_events_support import event_body, make_api, needs, open_backend

CITIES = {
    "paris": (48.8566, 2.3522),
    "versailles": (48.8049, 2.1204),
    "london": (51.5074, -0.1278),
    "suva": (-18.1416, 178.4419),
    "taveuni": (-16.85, 179.97),
}
TOPICS = ["jazz", "rock", "food", "art", "tech", "kids"]
WORDS = ["jazz", "night", "open", "air", "festival", "market", "talk", "quiet", "loud", "fair"]
BASE = datetime(2026, 7, 1, tzinfo=UTC)


def dataset(seed: int = 7, count: int = 120) -> list[dict]:
    """Events around a few cities (jittered up to ~30 km), over three months."""
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        city = rng.choice(list(CITIES))
        lat, lng = CITIES[city]
        lat += rng.uniform(-0.25, 0.25)
        lng = ((lng + rng.uniform(-0.25, 0.25) + 180) % 360) - 180
        start = BASE + timedelta(hours=rng.randrange(0, 24 * 90))
        words = rng.sample(WORDS, 3)
        bodies.append(
            event_body(
                title=f"{words[0].title()} {words[1]} #{i}",
                description=f"In {city}: {words[2]} and more.",
                topics=rng.sample(TOPICS, rng.randint(1, 3)),
                starts_at=start.isoformat(),
                ends_at=(start + timedelta(hours=2)).isoformat(),
                place={"name": f"Venue {i}", "lat": round(lat, 5), "lng": round(lng, 5)},
            )
        )
    bodies.append(
        event_body(
            title="Online jazz talk",
            topics=["jazz"],
            place={"name": "Online"},
            starts_at=(BASE + timedelta(days=3)).isoformat(),
            ends_at=None,
        )
    )
    return bodies


@pytest.fixture(scope="module", params=["sqlite", "mongomock"])
def loaded(request, tmp_path_factory):
    store = open_backend(request.param, tmp_path_factory.mktemp("search"))
    api = make_api(store)
    events = [api.create(**body) for body in dataset()]
    yield api, events
    store.close()


def words_of(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[^\W_]+", text)}


def oracle(
    events, topics=(), start=None, end=None, near=None, radius=10.0, q=None, sort="starts_at"
):
    """What the API must answer, computed by brute force."""
    found = []
    for e in events:
        if topics and not set(topics) & set(e["topics"]):
            continue
        if start and e["starts_at"] < start:
            continue
        if end and e["starts_at"] > end:
            continue
        if q is not None:
            wanted = words_of(q)
            if not wanted or not wanted <= words_of(e["title"] + " " + e["description"]):
                continue
        distance = None
        if near is not None:
            place = e["place"]
            if place["lat"] is None:
                continue
            distance = haversine_km(near[0], near[1], place["lat"], place["lng"])
            if distance > radius:
                continue
        found.append((distance, e))
    if sort == "distance":
        found.sort(key=lambda de: (de[0], de[1]["starts_at"], de[1]["id"]))
    else:
        found.sort(key=lambda de: (de[1]["starts_at"], de[1]["id"]))
    return found


def fetch_all(api, **params):
    """Every page of a search (limit 7 to cross pages)."""
    items, cursor, pages = [], None, 0
    while True:
        query = {**params, "limit": 7}
        if cursor:
            query["cursor"] = cursor
        resp = api.search(**query)
        assert resp.status_code == 200, resp.text
        items += resp.json["items"]
        cursor = resp.json["next_cursor"]
        pages += 1
        assert pages < 100
        if cursor is None:
            return items


FILTERS = {
    "topic": {"topics": ("jazz", "kids")},
    "window": {
        "start": format_time(BASE + timedelta(days=20)),
        "end": format_time(BASE + timedelta(days=50)),
    },
    "near": {"near": CITIES["paris"], "radius": 15.0},
    "q": {"q": "NIGHT"},
}


def as_params(spec: dict) -> dict:
    params: dict = {}
    if "topics" in spec:
        params["topic"] = list(spec["topics"])
    if "start" in spec:
        params["from"] = spec["start"]
        params["to"] = spec["end"]
    if "near" in spec:
        params["near"] = f"{spec['near'][0]},{spec['near'][1]}"
        params["radius_km"] = str(spec["radius"])
    if "q" in spec:
        params["q"] = spec["q"]
    if "sort" in spec:
        params["sort"] = spec["sort"]
    return params


COMBINATIONS = [
    combo for size in range(0, len(FILTERS) + 1) for combo in itertools.combinations(FILTERS, size)
]


@pytest.mark.parametrize("combo", COMBINATIONS, ids=lambda c: "+".join(c) or "none")
def test_every_filter_combination_matches_the_oracle(loaded, combo):
    api, events = loaded
    needs(api.store, *(["geo"] if "near" in combo else []), *(["text"] if "q" in combo else []))
    spec: dict = {}
    for name in combo:
        spec.update(FILTERS[name])
    sorts = ["starts_at", "distance"] if "near" in spec else ["starts_at"]
    for sort in sorts:
        expected = oracle(events, **{**spec, "sort": sort})
        got = fetch_all(api, **as_params({**spec, "sort": sort}))
        assert [e["id"] for e in got] == [e["id"] for _, e in expected], (combo, sort)
        for item, (distance, _) in zip(got, expected, strict=True):
            if distance is None:
                assert "distance_km" not in item
            else:
                assert item["distance_km"] == pytest.approx(distance, rel=0.005, abs=0.001)
    if combo:
        # Every filter must actually filter on this data.
        assert len(oracle(events, **spec)) < len(events)


def test_topics_are_any_of_and_case_insensitive(loaded):
    api, events = loaded
    one = {e["id"] for e in fetch_all(api, topic="Jazz")}
    both = {e["id"] for e in fetch_all(api, topic=["jazz", "ROCK"])}
    comma = {e["id"] for e in fetch_all(api, topic="jazz,rock")}
    assert one < both and both == comma
    assert both == {e["id"] for e in events if {"jazz", "rock"} & set(e["topics"])}


def test_time_window_bounds_are_inclusive_and_offsets_count(loaded):
    api, events = loaded
    target = sorted(events, key=lambda e: e["starts_at"])[10]
    start = datetime.fromisoformat(target["starts_at"].replace("Z", "+00:00"))
    # The same instant written with another offset.
    local = start.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    exact = {"from": local, "to": start.isoformat()}
    ids = [e["id"] for e in fetch_all(api, **exact)]
    assert target["id"] in ids
    assert all(e["starts_at"] == target["starts_at"] for e in fetch_all(api, **exact))


def test_geo_radius_distance_and_order(loaded):
    api, events = loaded
    needs(api.store, "geo")
    here = CITIES["paris"]
    items = fetch_all(api, near=f"{here[0]},{here[1]}", radius_km="20", sort="distance")
    assert items
    distances = [e["distance_km"] for e in items]
    assert distances == sorted(distances)
    for item in items:
        true = haversine_km(here[0], here[1], item["place"]["lat"], item["place"]["lng"])
        assert item["distance_km"] == pytest.approx(true, rel=0.005)
        assert true <= 20.0
    inside = {e["id"] for e in items}
    outside = [e for e in events if e["id"] not in inside and e["place"]["lat"] is not None]
    assert all(
        haversine_km(here[0], here[1], e["place"]["lat"], e["place"]["lng"]) > 20.0 for e in outside
    )


def test_a_point_across_the_antimeridian_is_found(loaded):
    api, events = loaded
    needs(api.store, "geo")
    # Just west of the antimeridian; Taveuni's events lie east of it at lng up to 180.
    query = (-16.85, -179.9)
    expected = oracle(events, near=query, radius=60.0, sort="distance")
    assert expected and any(e["place"]["lng"] > 0 for _, e in expected)
    items = fetch_all(api, near=f"{query[0]},{query[1]}", radius_km="60", sort="distance")
    assert [e["id"] for e in items] == [e["id"] for _, e in expected]
    for item, (distance, _) in zip(items, expected, strict=True):
        assert item["distance_km"] == pytest.approx(distance, rel=0.005)


def test_events_without_coordinates_are_never_near(loaded):
    api, _ = loaded
    needs(api.store, "geo")
    items = fetch_all(api, near="0,0", radius_km="20000")
    assert all(e["place"]["name"] != "Online" for e in items)
    assert any(e["place"]["name"] == "Online" for e in fetch_all(api, topic="jazz"))


def test_limit_is_clamped_and_pages_do_not_overlap(loaded):
    api, events = loaded
    resp = api.search(limit="1000")
    assert resp.status_code == 200 and len(resp.json["items"]) == 100
    all_ids = [e["id"] for e in fetch_all(api)]
    assert len(all_ids) == len(set(all_ids)) == len(events)
    assert len(api.search().json["items"]) == 20


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"near": "91,0"}, "near"),
        ({"near": "0,-181"}, "near"),
        ({"near": "x,y"}, "near"),
        ({"near": "1,2", "radius_km": "0"}, "radius_km"),
        ({"sort": "distance"}, "sort"),
        ({"from": "2026-07-01T00:00:00"}, "from"),
        ({"to": "2026-07-01"}, "to"),
        ({"limit": "0"}, "limit"),
        ({"cursor": "%%%"}, "cursor"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_parameters_are_422_naming_them(loaded, params, field):
    api, _ = loaded
    resp = api.search(**params)
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert field in {e["field"] for e in resp.json["errors"]}


def test_a_cursor_of_another_search_is_refused(loaded):
    api, _ = loaded
    cursor = api.search(topic="jazz", limit=2).json["next_cursor"]
    assert cursor
    resp = api.search(topic="rock", cursor=cursor)
    assert resp.status_code == 422 and resp.json["errors"][0]["field"] == "cursor"


# -- text -----------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "mongomock"])
def fresh(request, tmp_path):
    store = open_backend(request.param, tmp_path)
    yield make_api(store)
    store.close()


def test_q_finds_jazz_in_title_or_description_case_insensitively(fresh):
    needs(fresh.store, "text")
    a = fresh.create(title="Jazz night", description="Standards.")
    b = fresh.create(title="Open stage", description="Bring your JAZZ tunes")
    fresh.create(title="Rock night", description="Loud guitars", topics=["rock"])
    for q in ("jazz", "JAZZ", "Jazz"):
        ids = {e["id"] for e in fresh.search(q=q).json["items"]}
        assert ids == {a["id"], b["id"]}, q
    both = fresh.search(q="night jazz").json["items"]
    assert [e["id"] for e in both] == [a["id"]]


@pytest.mark.parametrize(
    "q", [".*", "(", "a|b", "[x]", "$where", '{"$ne": null}', "*", "jazz OR rock", "\\", "'"]
)
def test_operators_in_q_are_searched_literally(fresh, q):
    needs(fresh.store, "text")
    fresh.create(title="Jazz night", description="Standards")
    fresh.create(title="Rock night", description="Loud", topics=["rock"])
    resp = fresh.search(q=q)
    assert resp.status_code == 200
    # Nothing holds these characters (or the word "or"): no operator matched anything.
    assert resp.json["items"] == []


def test_literal_punctuation_around_words(fresh):
    needs(fresh.store, "text")
    match = fresh.create(title="C++ and Rust meetup", description="(hands-on)")
    fresh.create(title="Python meetup", description="intro")
    ids = [e["id"] for e in fresh.search(q="c++ (rust)").json["items"]]
    assert ids == [match["id"]]


def test_pagination_is_stable_while_events_are_added(fresh):
    for day in range(1, 11):
        fresh.create(starts_at=f"2026-08-{day:02d}T10:00:00Z", ends_at=None)
    first = fresh.search(limit=4).json
    seen = [e["id"] for e in first["items"]]
    # Events added before and after the page boundary.
    fresh.create(starts_at="2026-07-01T10:00:00Z", ends_at=None)
    fresh.create(starts_at="2026-09-01T10:00:00Z", ends_at=None)
    cursor = first["next_cursor"]
    while cursor:
        page = fresh.search(limit=4, cursor=cursor).json
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 11  # the ten, then the later one; none twice
