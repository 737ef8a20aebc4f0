"""The events service's rules: validation of bodies and search parameters, patches,
cursors, the public shape, the ICS form and the stamped read cache (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import icalendar
import pytest

from eventpost.errors import Invalid
from eventpost.geo import haversine_km
from eventpost.problems import ValidationProblem
from eventpost.validation import LIMIT_MAX, parse_model
from services.events.cache import StampedCache, VersionedCache
from services.events.domain import (
    EventIn,
    EventPatch,
    Search,
    apply_patch,
    decode_cursor,
    encode_cursor,
    etag_of,
    new_event,
    next_updated_at,
    parse_rfc3339,
    parse_search,
    to_public,
)
from services.events.ics import event_calendar

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def body(**changes):
    base = {
        "title": "Jazz night",
        "description": "Live quartet",
        "topics": ["Jazz", "music", "jazz"],
        "starts_at": "2026-12-01T20:00:00+01:00",
        "ends_at": "2026-12-01T23:00:00+01:00",
        "place": {"name": "Le Duc", "address": "75001 Paris", "lat": 48.8589, "lng": 2.3469},
    }
    base.update(changes)
    return base


def parse_event(data) -> EventIn:
    import json

    return parse_model(json.dumps(data).encode(), EventIn)


def fields_of(exc: pytest.ExceptionInfo) -> set[str]:
    return {e["field"] for e in exc.value.errors}


# -- bodies ---------------------------------------------------------------------------------


def test_a_valid_event_is_normalized():
    event = parse_event(body())
    assert event.topics == ["jazz", "music"]
    assert event.starts_at == "2026-12-01T19:00:00.000000Z"
    doc = new_event(event, "e1", NOW)
    assert doc["created_at"] == doc["updated_at"] == "2026-06-01T12:00:00.000000Z"
    assert doc["place"] == {
        "name": "Le Duc",
        "address": "75001 Paris",
        "lat": 48.8589,
        "lng": 2.3469,
    }


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        # The limit is on the text as sent, as docs/openapi.yaml's maxLength (schemathesis).
        ({"title": "x" + " " * 200}, "title"),
        ({"place": {"name": " " * 200 + "X"}}, "place.name"),
        ({"title": None}, "title"),
        ({"description": "x" * 5001}, "description"),
        ({"topics": []}, "topics"),
        ({"topics": ["Not a slug!"]}, "topics.0"),
        ({"topics": ["-edge"]}, "topics.0"),
        ({"topics": [f"t{i}" for i in range(21)]}, "topics"),
        ({"topics": "jazz"}, "topics"),
        ({"starts_at": "2026-12-01T20:00:00"}, "starts_at"),
        ({"starts_at": "2026-12-01"}, "starts_at"),
        ({"starts_at": "tomorrow"}, "starts_at"),
        ({"starts_at": 1764615600}, "starts_at"),
        ({"ends_at": "2026-12-01T18:59:59Z"}, "ends_at"),
        ({"place": {"address": "nowhere"}}, "place.name"),
        ({"place": {"name": "X", "lat": 91, "lng": 0}}, "place.lat"),
        ({"place": {"name": "X", "lat": 0, "lng": -180.5}}, "place.lng"),
        ({"place": {"name": "X", "lat": "48.1", "lng": 2}}, "place.lat"),
        ({"place": {"name": "X", "lat": 48.1}}, "place"),
        ({"place": {"name": "X", "lat": {"$gt": 0}, "lng": 2}}, "place.lat"),
        ({"colour": "red"}, "colour"),
        ({"id": "chosen"}, "id"),
    ],
)
def test_invalid_events_are_refused_naming_the_field(changes, field):
    with pytest.raises(ValidationProblem) as exc:
        parse_event(body(**changes))
    assert field in fields_of(exc)


def test_required_fields_are_required():
    for name in ("title", "topics", "starts_at", "place"):
        data = body()
        del data[name]
        with pytest.raises(ValidationProblem) as exc:
            parse_event(data)
        assert name in fields_of(exc)


def test_optional_fields_may_be_left_out():
    data = body()
    del data["description"], data["ends_at"]
    data["place"] = {"name": "Online"}
    doc = new_event(parse_event(data), "e1", NOW)
    assert doc["description"] == ""
    assert doc["ends_at"] is None
    assert doc["place"] == {"name": "Online", "address": None, "lat": None, "lng": None}


def test_rfc3339_forms():
    assert parse_rfc3339("2026-12-01t20:00:00.123456789z") == datetime(
        2026, 12, 1, 20, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_rfc3339("2026-12-01 20:00:00-05:30").hour == 1
    for bad in ("20261201T200000Z", "2026-12-01T20:00Z", "2026-13-01T20:00:00Z", ""):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)


# -- patches --------------------------------------------------------------------------------


def stored(**changes):
    doc = new_event(parse_event(body()), "e1", NOW)
    doc["version"] = 1
    doc.update(changes)
    return doc


def patch_of(data) -> EventPatch:
    import json

    return parse_model(json.dumps(data).encode(), EventPatch)


def test_patch_changes_only_what_differs():
    current = stored()
    assert apply_patch(current, patch_of({"title": "Jazz night"})) == {}
    changes = apply_patch(current, patch_of({"title": "Jazz late", "topics": ["Blues"]}))
    assert changes == {"title": "Jazz late", "topics": ["blues"]}


def test_patch_merges_the_place_and_clears_with_null():
    current = stored()
    changes = apply_patch(current, patch_of({"place": {"address": None}, "ends_at": None}))
    assert changes["place"] == {"name": "Le Duc", "address": None, "lat": 48.8589, "lng": 2.3469}
    assert changes["ends_at"] is None
    assert apply_patch(current, patch_of({"description": None})) == {"description": ""}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"title": None}, "title"),
        ({"topics": []}, "topics"),
        ({"starts_at": None}, "starts_at"),
        ({"place": None}, "place"),
        ({"place": {"name": None}}, "place.name"),
        ({"version": 7}, "version"),
    ],
)
def test_patch_refuses_removing_required_fields(data, field):
    with pytest.raises(ValidationProblem) as exc:
        patch_of(data)
    assert field in fields_of(exc)


def test_patch_result_must_be_a_valid_event():
    current = stored()
    with pytest.raises(Invalid) as exc:
        apply_patch(current, patch_of({"starts_at": "2026-12-02T00:00:00Z"}))
    assert fields_of(exc) == {"ends_at"}
    with pytest.raises(Invalid) as exc:
        apply_patch(current, patch_of({"place": {"lat": None}}))
    assert fields_of(exc) == {"place"}
    moved = apply_patch(
        current,
        patch_of({"starts_at": "2026-12-02T00:00:00Z", "ends_at": "2026-12-02T02:00:00Z"}),
    )
    assert moved["starts_at"] == "2026-12-02T00:00:00.000000Z"


def test_updated_at_always_moves_forward():
    current = stored(updated_at="2026-06-01T12:00:00.000000Z")
    assert next_updated_at(current, NOW) == "2026-06-01T12:00:00.000001Z"
    earlier = datetime(2026, 5, 1, tzinfo=UTC)
    assert next_updated_at(current, earlier) == "2026-06-01T12:00:00.000001Z"
    later = datetime(2026, 6, 2, tzinfo=UTC)
    assert next_updated_at(current, later) == "2026-06-02T00:00:00.000000Z"


def test_public_form_hides_bookkeeping_and_rounds_distance():
    doc = stored(distance_km=1.23456789, _internal="x")
    public = to_public(doc)
    assert "version" not in public and "_internal" not in public
    assert public["distance_km"] == 1.235
    assert set(public) == {
        "id",
        "title",
        "description",
        "topics",
        "starts_at",
        "ends_at",
        "place",
        "created_at",
        "updated_at",
        "distance_km",
    }
    assert etag_of(doc) == "v1"


# -- search parameters ----------------------------------------------------------------------


def test_search_defaults():
    assert parse_search({}) == Search()


def test_search_every_parameter():
    search = parse_search(
        {
            "topic": ["Jazz", "rock,blues", "jazz"],
            "from": "2026-12-01T00:00:00 01:00",  # an unencoded "+" arrives as a space
            "to": "2026-12-31T00:00:00Z",
            "near": "48.85,2.35",
            "radius_km": "5.5",
            "q": "  late   night ",
            "sort": "distance",
            "limit": "500",
        }
    )
    assert search.topics == ("jazz", "rock", "blues")
    assert search.starts_from == "2026-11-30T23:00:00.000000Z"
    assert search.starts_to == "2026-12-31T00:00:00.000000Z"
    assert search.near == (48.85, 2.35)
    assert search.radius_km == 5.5
    assert search.text == "late night"
    assert search.sort == "distance"
    assert search.limit == LIMIT_MAX


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"topic": "no spaces"}, "topic"),
        ({"topic": ""}, "topic"),
        ({"from": "2026-12-01T00:00:00"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"}, "to"),
        ({"from": ["2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"]}, "from"),
        ({"near": "48.85"}, "near"),
        ({"near": "48.85,2.35,1"}, "near"),
        ({"near": "91,0"}, "near"),
        ({"near": "0,181"}, "near"),
        ({"near": "nan,0"}, "near"),
        ({"near": "abc,def"}, "near"),
        ({"near": "1,2", "radius_km": "0"}, "radius_km"),
        ({"near": "1,2", "radius_km": "-3"}, "radius_km"),
        ({"near": "1,2", "radius_km": "20001"}, "radius_km"),
        ({"near": "1,2", "radius_km": "inf"}, "radius_km"),
        ({"near": "1,2", "radius_km": "ten"}, "radius_km"),
        ({"radius_km": "5"}, "radius_km"),
        ({"sort": "distance"}, "sort"),
        ({"sort": "title"}, "sort"),
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "2.5"}, "limit"),
        ({"q": "x" * 201}, "q"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"topics": "jazz"}, "topics"),
    ],
)
def test_bad_search_parameters_are_named(params, field):
    with pytest.raises(Invalid) as exc:
        parse_search(params)
    assert field in fields_of(exc)


def test_every_bad_parameter_is_named_at_once():
    with pytest.raises(Invalid) as exc:
        parse_search({"limit": "0", "near": "x", "sort": "nope"})
    assert fields_of(exc) == {"limit", "near", "sort"}


def test_checks_of_one_parameter_against_another_are_named_with_the_rest():
    with pytest.raises(Invalid) as exc:
        parse_search(
            {
                "from": "2026-12-02T00:00:00Z",
                "to": "2026-12-01T00:00:00Z",
                "radius_km": "5",
                "sort": "distance",
                "limit": "0",
                "colour": "red",
            }
        )
    assert exc.value.errors == [
        {"field": "colour", "message": "unknown query parameter"},
        {"field": "to", "message": "must not be before from"},
        {"field": "radius_km", "message": "needs near"},
        {"field": "sort", "message": "sort=distance needs near"},
        {"field": "limit", "message": "must be at least 1"},
    ]
    assert exc.value.detail == "unknown query parameter"


def test_cursor_is_bound_to_its_search():
    search = parse_search({"topic": "jazz"})
    cursor = encode_cursor(search, "inner")
    assert decode_cursor(cursor, search) == "inner"
    assert parse_search({"topic": "jazz", "cursor": cursor, "limit": "5"}).cursor == cursor
    with pytest.raises(Invalid) as exc:
        parse_search({"topic": "rock", "cursor": cursor})
    assert fields_of(exc) == {"cursor"}


def test_haversine_known_distance():
    # Paris (Notre-Dame) to London (Charing Cross): about 343.5 km on the mean sphere.
    assert haversine_km(48.8530, 2.3498, 51.5073, -0.1276) == pytest.approx(343.5, abs=1.0)
    assert haversine_km(0, 179.9, 0, -179.9) == pytest.approx(22.24, abs=0.01)


# -- ICS ------------------------------------------------------------------------------------


def test_ics_is_a_valid_vevent_in_utc():
    public = to_public(stored())
    raw = event_calendar(public, version=3)
    cal = icalendar.Calendar.from_ical(raw)
    assert cal["VERSION"] == "2.0" and cal["PRODID"]
    (vevent,) = cal.walk("VEVENT")
    assert str(vevent["UID"]) == "e1@eventpost"
    assert vevent.decoded("DTSTART") == datetime(2026, 12, 1, 19, 0, tzinfo=UTC)
    assert vevent.decoded("DTEND") == datetime(2026, 12, 1, 22, 0, tzinfo=UTC)
    assert vevent.decoded("DTSTAMP") == NOW
    assert str(vevent["SUMMARY"]) == "Jazz night"
    assert str(vevent["DESCRIPTION"]) == "Live quartet"
    assert str(vevent["LOCATION"]) == "Le Duc, 75001 Paris"
    assert (vevent["GEO"].latitude, vevent["GEO"].longitude) == (48.8589, 2.3469)
    assert vevent["SEQUENCE"] == 2
    assert b"DTSTART:20261201T190000Z" in raw
    assert raw.startswith(b"BEGIN:VCALENDAR\r\n")


def test_ics_without_optional_parts():
    public = to_public(stored(ends_at=None, description="", place={"name": "Online"}))
    (vevent,) = icalendar.Calendar.from_ical(event_calendar(public, 1)).walk("VEVENT")
    assert "DTEND" not in vevent and "GEO" not in vevent and "DESCRIPTION" not in vevent
    assert str(vevent["LOCATION"]) == "Online"


# -- cache ----------------------------------------------------------------------------------


def test_stamped_cache_recomputes_after_a_newer_stamp():
    now = [0.0]
    cache = StampedCache(max_bytes=10_000, ttl=60, timer=lambda: now[0])
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return value

        return run

    assert cache.get_or_compute(1, "k", compute("a")) == "a"
    assert cache.get_or_compute(1, "k", compute("b")) == "a"
    assert cache.get_or_compute(2, "k", compute("c")) == "c"
    # A reader still holding the older stamp computes afresh and caches nothing.
    assert cache.get_or_compute(1, "k", compute("d")) == "d"
    assert cache.get_or_compute(2, "k", compute("e")) == "c"
    now[0] = 61.0
    assert cache.get_or_compute(2, "k", compute("f")) == "f"
    assert calls == ["a", "c", "d", "f"]


def test_versioned_cache_serves_an_entry_only_for_the_version_it_was_made_from():
    now = [0.0]
    cache = VersionedCache(max_bytes=10_000, ttl=60, timer=lambda: now[0])
    calls = []

    def compute(version, value):
        def run():
            calls.append(value)
            return (version, value)

        return run

    assert cache.get_or_compute("k", 1, compute(1, "a")) == "a"
    assert cache.get_or_compute("k", 1, compute(1, "b")) == "a"
    assert cache.get_or_compute("other", 4, compute(4, "o")) == "o"
    assert cache.get_or_compute("k", 2, compute(2, "c")) == "c"
    assert cache.get_or_compute("other", 4, compute(4, "p")) == "o"  # k's write: o stays
    # A write came between the version read and the document read: what was read is kept
    # under its own version, so the next reader of version 4 uses it.
    assert cache.get_or_compute("k", 3, compute(4, "d")) == "d"
    assert cache.get_or_compute("k", 4, compute(4, "e")) == "d"
    assert cache.get_or_compute("k", 5, lambda: None) is None  # gone meanwhile
    now[0] = 61.0
    assert cache.get_or_compute("k", 4, compute(4, "f")) == "f"
    assert calls == ["a", "o", "c", "d", "f"]
    assert (cache.hits, cache.misses) == (3, 6)


def test_store_query_of_a_search():
    from eventpost.storage import AnyOf, Near, Range
    from services.events.store import store_query

    search = parse_search(
        {
            "topic": "jazz",
            "from": "2026-12-01T00:00:00Z",
            "near": "48.85,2.35",
            "radius_km": "3",
            "q": "late",
            "sort": "distance",
            "limit": "5",
        }
    )
    query = store_query(search, "inner")
    assert query.where == {
        "topics": AnyOf(["jazz"]),
        "starts_at": Range(gte="2026-12-01T00:00:00.000000Z"),
    }
    assert query.near == Near(lat=48.85, lng=2.35, radius_km=3.0)
    assert query.text == "late"
    assert query.sort == (("distance", 1), ("starts_at", 1))
    assert (query.limit, query.cursor) == (5, "inner")
    plain = store_query(parse_search({}), None)
    assert plain.where == {} and plain.near is None and plain.sort == (("starts_at", 1),)


def test_stamped_cache_is_bounded_in_bytes():
    cache = StampedCache(max_bytes=10_000)
    for i in range(100):
        cache.get_or_compute(1, i, lambda: "x" * 1000)
    assert len(cache._entries) <= 10_000 // (256 + 2000)
    assert cache.get_or_compute(1, 99, lambda: "fresh") == "x" * 1000  # the newest stays
