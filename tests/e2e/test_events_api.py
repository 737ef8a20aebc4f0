"""Every row of API.md's "Events" table through the gateway of the running suite, and the
event.updated / event.deleted messages reaching notifications (reminders follow a moved
event; a deleted event's reminders are cancelled and their owners emailed).

The suite is shared by every e2e test: each test uses topics of its own."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import icalendar
import pytest

from devtools.samples import sample_events
from eventpost.geo import haversine_km

PARIS = (48.8566, 2.3522)
VERSAILLES = (48.8049, 2.1204)
LONDON = (51.5074, -0.1278)


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _problem(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status
    return body


def _topic() -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


def _future(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0).isoformat()


def _body(topic: str, point=PARIS, days: float = 30, **changes) -> dict:
    body = {
        "title": "Jazz night",
        "description": "A quartet plays standards.",
        "topics": [topic, "Jazz"],
        "starts_at": _future(days),
        "place": {"name": "Le Duc", "address": "42 rue des Lombards", "lat": point[0],
                  "lng": point[1]},
    }  # fmt: skip
    body.update(changes)
    return body


@pytest.fixture(scope="module")
def admin(suite) -> dict[str, str]:
    return _auth(suite.admin_token())


@pytest.fixture(scope="module")
def member(suite) -> dict:
    account = suite.sign_up()
    account["headers"] = _auth(suite.login(account["username"], account["password"]))
    return account


def _create(suite, admin, body) -> dict:
    resp = suite.client.post("/v1/events", json=body, headers=admin)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_admin_manages_an_event(suite, admin):
    topic = _topic()
    resp = suite.client.post("/v1/events", json=_body(topic), headers=admin)
    assert resp.status_code == 201, resp.text
    event = resp.json()
    assert resp.headers["location"] == f"/v1/events/{event['id']}"
    assert event["topics"] == [topic, "jazz"]
    assert event["starts_at"].endswith("Z")
    path = f"/v1/events/{event['id']}"

    got = suite.client.get(path)
    assert got.status_code == 200 and got.json() == event
    etag = got.headers["etag"]
    assert suite.client.get(path, headers={"If-None-Match": etag}).status_code == 304

    ics = suite.client.get(path + ".ics")
    assert ics.status_code == 200
    assert ics.headers["content-type"].startswith("text/calendar")
    (vevent,) = icalendar.Calendar.from_ical(ics.content).walk("VEVENT")
    assert str(vevent["SUMMARY"]) == "Jazz night"
    assert str(vevent["UID"]).startswith(event["id"])

    patched = suite.client.patch(
        path, json={"title": "Jazz late"}, headers={**admin, "If-Match": etag}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["title"] == "Jazz late"
    assert patched.headers["etag"] != etag
    # Read after write through the gateway: never the older copy.
    assert suite.client.get(path).json()["title"] == "Jazz late"

    stale = suite.client.patch(path, json={"title": "x"}, headers={**admin, "If-Match": etag})
    _problem(stale, 412)
    _problem(suite.client.patch(path, json={"title": ""}, headers=admin), 422)
    assert suite.client.get(path).json()["title"] == "Jazz late"

    assert suite.client.delete(path, headers=admin).status_code == 204
    _problem(suite.client.get(path), 404)
    _problem(suite.client.get(path + ".ics"), 404)
    _problem(suite.client.delete(path, headers=admin), 404)
    _problem(suite.client.patch(path, json={"title": "x"}, headers=admin), 404)


def test_only_admins_write(suite, admin, member):
    topic = _topic()
    event = _create(suite, admin, _body(topic))
    path = f"/v1/events/{event['id']}"
    for headers, status in ((member["headers"], 403), ({}, 401), (_auth("junk"), 401)):
        _problem(suite.client.post("/v1/events", json=_body(topic), headers=headers), status)
        _problem(suite.client.patch(path, json={"title": "Mine"}, headers=headers), status)
        _problem(suite.client.delete(path, headers=headers), status)
    assert suite.client.get(path).json() == event
    assert [
        e["id"] for e in suite.client.get("/v1/events", params={"topic": topic}).json()["items"]
    ] == [event["id"]]
    _problem(suite.client.post("/v1/events", json=_body(topic, title=""), headers=admin), 422)


def test_search_through_the_gateway(suite, admin):
    topic = _topic()
    paris = _create(suite, admin, _body(topic, PARIS, days=10, title="Jazz night"))
    versailles = _create(
        suite, admin, _body(topic, VERSAILLES, days=20, title="Baroque evening",
                            description="Harpsichord and JAZZ improvisations")
    )  # fmt: skip
    london = _create(suite, admin, _body(topic, LONDON, days=30, title="Rock gig",
                                         description="Loud", topics=[topic, "rock"]))  # fmt: skip

    def ids(**params):
        resp = suite.client.get("/v1/events", params={"topic": topic, **params})
        assert resp.status_code == 200, resp.text
        return [e["id"] for e in resp.json()["items"]]

    assert ids() == [paris["id"], versailles["id"], london["id"]]
    near = suite.client.get(
        "/v1/events",
        params={"topic": topic, "near": f"{PARIS[0]},{PARIS[1]}", "radius_km": 50,
                "sort": "distance"},
    ).json()["items"]  # fmt: skip
    assert [e["id"] for e in near] == [paris["id"], versailles["id"]]
    expected = haversine_km(*PARIS, *VERSAILLES)
    assert near[1]["distance_km"] == pytest.approx(expected, rel=0.005)
    assert ids(near=f"{PARIS[0]},{PARIS[1]}") == [paris["id"]]  # default radius 10 km
    assert ids(q="jazz") == [paris["id"], versailles["id"]]
    assert ids(q="(jazz)*") == [paris["id"], versailles["id"]]
    assert ids(**{"from": _future(15), "to": _future(25)}) == [versailles["id"]]
    assert ids(topic=[topic, "nothing-else"]) == ids()

    first = suite.client.get("/v1/events", params={"topic": topic, "limit": 2}).json()
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = suite.client.get(
        "/v1/events", params={"topic": topic, "limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [e["id"] for e in rest["items"]] == [london["id"]] and rest["next_cursor"] is None

    for params, field in (
        ({"near": "100,0"}, "near"),
        ({"sort": "distance"}, "sort"),
        ({"from": "2026-01-01T00:00:00"}, "from"),
        ({"limit": 0}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
    ):
        body = _problem(suite.client.get("/v1/events", params=params), 422)
        assert field in {e["field"] for e in body["errors"]}


def _wait(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_moved_and_deleted_events_reach_reminders(suite, admin, member):
    topic = _topic()
    event = _create(suite, admin, _body(topic, days=30, title=f"Concert {topic}"))
    path = f"/v1/events/{event['id']}"
    resp = suite.client.post(
        "/v1/notifications",
        json={"event_id": event["id"], "before": "PT1H"},
        headers=member["headers"],
    )
    assert resp.status_code == 201, resp.text
    reminder = resp.json()

    new_start = datetime.fromisoformat(event["starts_at"].replace("Z", "+00:00")) + timedelta(
        days=1
    )
    moved = suite.client.patch(path, json={"starts_at": new_start.isoformat()}, headers=admin)
    assert moved.status_code == 200, moved.text
    want = new_start - timedelta(hours=1)

    def follows():
        got = suite.client.get(
            f"/v1/notifications/{reminder['id']}", headers=member["headers"]
        ).json()
        return datetime.fromisoformat(got["send_at"].replace("Z", "+00:00")) == want

    _wait(follows)

    assert suite.client.delete(path, headers=admin).status_code == 204

    def cancelled():
        got = suite.client.get(
            f"/v1/notifications/{reminder['id']}", headers=member["headers"]
        ).json()
        return got["status"] == "cancelled"

    _wait(cancelled)
    mail = suite.mailbox.wait_for(
        to=member["email"], subject_contains=f"Cancelled: Concert {topic}", timeout=15
    )
    assert member["email"] in str(mail["To"])


def test_populate_through_the_gateway(suite):
    suite.admin_token()  # makes sure the admin exists
    result = subprocess.run(
        [sys.executable, "-m", "devtools.populate", "--count", "5", "--seed", "99",
         "--url", suite.url, "--username", "e2e_admin", "--password-stdin"],
        input="admin password 1\n", text=True, capture_output=True, env=suite.env,
        cwd=Path(__file__).resolve().parents[2], timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for body in sample_events(5, seed=99):
        found = suite.client.get(
            "/v1/events", params={"q": body["title"], "topic": body["topics"][0], "limit": 100}
        ).json()["items"]
        assert any(e["title"] == body["title"] and e["place"] == body["place"] for e in found), (
            body["title"]
        )
