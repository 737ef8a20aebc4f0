"""The events service in-process (falcon TestClient over create_app) on a real store:
admin writes, auth, preconditions, outbox events, caching, ETags and the ICS form."""

from __future__ import annotations

import icalendar
import pytest

from eventpost.contracts import EVENT_CREATED, EVENT_DELETED, EVENT_UPDATED
from eventpost.settings import Settings
from services.events.app import create_app
from tests.integration.test_events_support import Api, event_body, make_api, open_backend


@pytest.fixture(params=["sqlite", "mongomock"])
def api(request, tmp_path):
    store = open_backend(request.param, tmp_path)
    yield make_api(store)
    store.close()


def snapshot(api: Api) -> tuple:
    """Everything a refused request must leave unchanged: the events and the outbox."""
    listed = api.search(limit=100).json["items"]
    return listed, [e["id"] for e in api.outbox()]


# -- create ---------------------------------------------------------------------------------


def test_admin_creates_an_event(api):
    resp = api.client.simulate_post("/v1/events", json=event_body(), headers=api.admin)
    assert resp.status_code == 201
    event = resp.json
    assert resp.headers["location"] == f"/v1/events/{event['id']}"
    assert resp.headers["etag"] == '"v1"'
    assert event["title"] == "Jazz night"
    assert event["starts_at"] == "2026-12-01T19:00:00.000000Z"
    assert event["created_at"] == event["updated_at"] == "2026-06-01T12:00:00.000000Z"
    assert set(event) == {
        "id",
        "title",
        "description",
        "topics",
        "starts_at",
        "ends_at",
        "place",
        "created_at",
        "updated_at",
    }
    got = api.client.simulate_get(resp.headers["location"])
    assert got.status_code == 200 and got.json == event
    (created,) = api.outbox()
    assert created["type"] == EVENT_CREATED
    assert created["payload"] == {"event": event}
    assert created["request_id"]


def test_request_id_travels_into_the_outbox(api):
    api.client.simulate_post(
        "/v1/events", json=event_body(), headers={**api.admin, "X-Request-ID": "req-42"}
    )
    assert api.outbox()[0]["request_id"] == "req-42"


@pytest.mark.parametrize(
    ("headers_of", "status"),
    [
        (lambda api: {}, 401),
        (lambda api: {"Authorization": "Bearer not.a.token"}, 401),
        (lambda api: {"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
        (lambda api: {"Authorization": "Bearer " + api.tokens.sign("admin", ttl=-60)}, 401),
        (lambda api: api.user, 403),
    ],
)
def test_only_admins_write_and_refusals_change_nothing(api, headers_of, status):
    event = api.create()
    before = snapshot(api)
    headers = headers_of(api)
    path = f"/v1/events/{event['id']}"
    for resp in (
        api.client.simulate_post("/v1/events", json=event_body(), headers=headers),
        api.client.simulate_patch(path, json={"title": "Hacked"}, headers=headers),
        api.client.simulate_delete(path, headers=headers),
    ):
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json["status"] == status
        if status == 401:
            assert resp.headers["www-authenticate"].startswith("Bearer")
    assert snapshot(api) == before
    assert api.client.simulate_get(path).json == event


def test_a_token_signed_by_another_key_is_refused(api):
    from tests.integration.test_events_support import Tokens

    forged = Tokens().sign("admin")
    resp = api.client.simulate_post(
        "/v1/events", json=event_body(), headers={"Authorization": f"Bearer {forged}"}
    )
    assert resp.status_code == 401


@pytest.mark.parametrize(
    "changes",
    [
        {"title": ""},
        {"topics": []},
        {"starts_at": "2026-12-01T20:00:00"},
        {"ends_at": "2026-12-01T19:00:00+01:00"},
        {"place": {"name": "X", "lat": 95, "lng": 0}},
        {"place": {"name": "X", "lat": 0, "lng": 200}},
        {"unknown": 1},
        {"title": {"$ne": None}},
    ],
)
def test_invalid_bodies_are_422_and_store_nothing(api, changes):
    resp = api.client.simulate_post("/v1/events", json=event_body(**changes), headers=api.admin)
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json["errors"] and all("field" in e for e in resp.json["errors"])
    assert snapshot(api) == ([], [])


def test_malformed_and_oversized_bodies(api):
    resp = api.client.simulate_post(
        "/v1/events", body=b"{not json", headers={**api.admin, "Content-Type": "application/json"}
    )
    assert resp.status_code == 400
    big = event_body(description="x" * 70_000)
    assert api.client.simulate_post("/v1/events", json=big, headers=api.admin).status_code == 413
    assert snapshot(api) == ([], [])


# -- read -----------------------------------------------------------------------------------


def test_get_with_etag_and_conditional_get(api):
    event = api.create()
    path = f"/v1/events/{event['id']}"
    resp = api.client.simulate_get(path)
    assert resp.headers["etag"] == '"v1"'
    assert resp.headers["cache-control"] == "no-cache"
    assert api.client.simulate_get(path, headers={"If-None-Match": '"v1"'}).status_code == 304
    assert api.client.simulate_get(path, headers={"If-None-Match": 'W/"v1"'}).status_code == 304
    assert api.client.simulate_get(path, headers={"If-None-Match": '"v0"'}).status_code == 200


def test_unknown_event_is_404_problem(api):
    for path in ("/v1/events/nope", "/v1/events/nope.ics"):
        resp = api.client.simulate_get(path)
        assert resp.status_code == 404
        assert resp.headers["content-type"] == "application/problem+json"
    for method in ("PATCH", "DELETE"):
        resp = api.client.simulate_request(
            method, "/v1/events/nope", json={"title": "x"}, headers=api.admin
        )
        assert resp.status_code == 404


def test_ics(api):
    event = api.create()
    resp = api.client.simulate_get(f"/v1/events/{event['id']}.ics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/calendar")
    cal = icalendar.Calendar.from_ical(resp.content)
    (vevent,) = cal.walk("VEVENT")
    assert str(vevent["UID"]) == f"{event['id']}@eventpost"
    assert vevent["DTSTART"].to_ical() == b"20261201T190000Z"
    assert vevent["DTEND"].to_ical() == b"20261201T220000Z"
    assert str(vevent["SUMMARY"]) == "Jazz night"
    assert str(vevent["LOCATION"]).startswith("Le Duc des Lombards")
    assert vevent["GEO"].latitude == 48.8589
    assert "DTSTAMP" in vevent


# -- patch ----------------------------------------------------------------------------------


def test_patch_moves_the_start_and_emits_event_updated(api):
    event = api.create()
    api.clock.advance(60)
    path = f"/v1/events/{event['id']}"
    resp = api.client.simulate_patch(
        path,
        json={"starts_at": "2026-12-01T21:00:00+01:00", "topics": ["Jazz", "late"]},
        headers={**api.admin, "If-Match": '"v1"'},
    )
    assert resp.status_code == 200, resp.text
    updated = resp.json
    assert resp.headers["etag"] == '"v2"'
    assert updated["starts_at"] == "2026-12-01T20:00:00.000000Z"
    assert updated["topics"] == ["jazz", "late"]
    assert updated["updated_at"] == "2026-06-01T12:01:00.000000Z"
    assert updated["created_at"] == event["created_at"]
    assert api.client.simulate_get(path).json == updated
    message = api.outbox()[-1]
    assert message["type"] == EVENT_UPDATED
    assert message["payload"] == {"event": updated, "old_starts_at": event["starts_at"]}


def test_patch_without_a_start_change_still_says_the_old_start(api):
    event = api.create()
    resp = api.client.simulate_patch(
        f"/v1/events/{event['id']}", json={"title": "Jazz late"}, headers=api.admin
    )
    assert resp.status_code == 200
    message = api.outbox()[-1]
    assert message["payload"]["old_starts_at"] == event["starts_at"]
    assert message["payload"]["event"]["title"] == "Jazz late"


def test_patch_that_changes_nothing_writes_nothing(api):
    event = api.create()
    resp = api.client.simulate_patch(
        f"/v1/events/{event['id']}", json={"title": "Jazz night"}, headers=api.admin
    )
    assert resp.status_code == 200 and resp.headers["etag"] == '"v1"'
    assert len(api.outbox()) == 1


def test_stale_if_match_is_412_and_changes_nothing(api):
    event = api.create()
    path = f"/v1/events/{event['id']}"
    api.client.simulate_patch(path, json={"title": "Second"}, headers=api.admin)
    before = snapshot(api)
    stale = {**api.admin, "If-Match": '"v1"'}
    resp = api.client.simulate_patch(path, json={"title": "Third"}, headers=stale)
    assert resp.status_code == 412
    assert resp.headers["content-type"] == "application/problem+json"
    weak = {**api.admin, "If-Match": 'W/"v2"'}
    assert api.client.simulate_patch(path, json={"title": "x"}, headers=weak).status_code == 412
    assert api.client.simulate_delete(path, headers=stale).status_code == 412
    assert snapshot(api) == before
    assert api.client.simulate_get(path).json["title"] == "Second"
    star = {**api.admin, "If-Match": "*"}
    assert (
        api.client.simulate_patch(path, json={"title": "Fourth"}, headers=star).status_code == 200
    )


def test_patch_validation(api):
    event = api.create()
    path = f"/v1/events/{event['id']}"
    before = snapshot(api)
    for body in (
        {"title": None},
        {"starts_at": "2026-12-02T00:00:00Z"},  # after ends_at
        {"place": {"lat": 100}},
        {"place": {"lat": None}},  # lat without lng
        {"created_at": "2020-01-01T00:00:00Z"},
        {"id": "other"},
    ):
        resp = api.client.simulate_patch(path, json=body, headers=api.admin)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json["errors"]
    assert snapshot(api) == before


def test_patch_merges_place(api):
    event = api.create()
    resp = api.client.simulate_patch(
        f"/v1/events/{event['id']}",
        json={"place": {"address": None, "lat": 48.86, "lng": 2.35}, "description": None},
        headers=api.admin,
    )
    assert resp.status_code == 200
    assert resp.json["place"] == {
        "name": "Le Duc des Lombards",
        "address": None,
        "lat": 48.86,
        "lng": 2.35,
    }
    assert resp.json["description"] == ""


# -- delete ---------------------------------------------------------------------------------


def test_delete_emits_event_deleted(api):
    event = api.create()
    path = f"/v1/events/{event['id']}"
    resp = api.client.simulate_delete(path, headers={**api.admin, "If-Match": '"v1"'})
    assert resp.status_code == 204
    assert api.client.simulate_get(path).status_code == 404
    assert api.client.simulate_delete(path, headers=api.admin).status_code == 404
    message = api.outbox()[-1]
    assert message["type"] == EVENT_DELETED
    assert message["payload"] == {"event_id": event["id"], "event": event}


# -- cache ----------------------------------------------------------------------------------


def test_reads_after_each_write_see_it(api):
    event = api.create()
    path = f"/v1/events/{event['id']}"
    # Warm the caches.
    assert api.search(topic="jazz").json["items"][0]["title"] == "Jazz night"
    assert api.client.simulate_get(path).json["title"] == "Jazz night"
    api.client.simulate_patch(path, json={"title": "Blues night"}, headers=api.admin)
    assert api.client.simulate_get(path).json["title"] == "Blues night"
    assert api.search(topic="jazz").json["items"][0]["title"] == "Blues night"
    api.client.simulate_delete(path, headers=api.admin)
    assert api.client.simulate_get(path).status_code == 404
    assert api.search(topic="jazz").json["items"] == []


def test_a_write_through_another_app_on_the_same_store_is_seen(api):
    """Two apps on one store stand for two processes: each has its own read cache."""
    other = create_app(
        Settings(service="events"), store=api.store, clock=api.clock, verifier=api.tokens.keyset
    )
    from falcon.testing import TestClient

    other_client = TestClient(other)
    event = api.create()
    path = f"/v1/events/{event['id']}"
    assert other_client.simulate_get(path).json["title"] == "Jazz night"
    assert other_client.simulate_get("/v1/events").json["items"][0]["title"] == "Jazz night"
    api.client.simulate_patch(path, json={"title": "Changed"}, headers=api.admin)
    assert other_client.simulate_get(path).json["title"] == "Changed"
    assert other_client.simulate_get("/v1/events").json["items"][0]["title"] == "Changed"


def test_ready_checks_the_store(api):
    resp = api.client.simulate_get("/ready")
    assert resp.status_code == 200 and "store" in resp.json["checks"]
    api.store.close()
