"""Every row of API.md's "Notifications" table through the gateway of the running suite, and
reminders that arrive on time: the real dispatcher, RabbitMQ, email-sender and SMTP sink.

Arrival times come from the sink: it names each stored message file after the UTC time it
was received. Addresses use example.com (the email-sender refuses special-use domains)."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from email_sender.compose import IDEMPOTENCY_HEADER
from eventpost.storage.sqlite import SqliteStore
from eventpost.timeutil import parse_time
from services.notifications.store import NotificationsStore

PASSWORD = "correct horse 1"
FIELDS = {
    "id", "event_id", "email", "subject", "message", "send_at", "before", "status",
    "attempts", "sent_at", "last_error", "created_at", "updated_at",
}  # fmt: skip
_ARRIVAL = re.compile(r"^(\d{8}T\d{6}\.\d{6})Z-")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _problem(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status
    return body


def _fields(resp: httpx.Response, status: int = 422) -> set[str]:
    return {e["field"] for e in _problem(resp, status).get("errors", [])}


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def _in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


class User:
    """A signed-up account (address at example.com) with its token."""

    def __init__(self, suite) -> None:
        self.name = f"n{uuid.uuid4().hex[:10]}"
        self.email = f"{self.name}@example.com"
        resp = suite.client.post(
            "/v1/users", json={"username": self.name, "email": self.email, "password": PASSWORD}
        )
        assert resp.status_code == 201, resp.text
        self.id = resp.json()["id"]
        self.token = suite.login(self.name, PASSWORD)
        self.headers = _auth(self.token)


@pytest.fixture(scope="module")
def admin(suite) -> dict[str, str]:
    return _auth(suite.admin_token())


def _event(suite, admin, starts_at: datetime, title: str = "Jazz night") -> dict:
    body = {
        "title": title,
        "description": "A quartet plays standards.",
        "topics": [f"e2e-n-{uuid.uuid4().hex[:8]}"],
        "starts_at": _iso(starts_at),
        "place": {"name": "Le Duc", "address": "42 rue des Lombards", "lat": 48.86, "lng": 2.35},
    }
    resp = suite.client.post("/v1/events", json=body, headers=admin)
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def event(suite, admin) -> dict:
    return _event(suite, admin, _in(30 * 86400))


def _create(suite, user: User, **body) -> httpx.Response:
    return suite.client.post("/v1/notifications", json=body, headers=user.headers)


def _arrivals(suite, key_prefix: str) -> list[tuple[datetime, object]]:
    """(arrival time, message) of every stored email whose idempotency key starts so."""
    box = suite.mailbox
    found = []
    for path in box.paths():
        msg = box._read(path)
        if str(msg.get(IDEMPOTENCY_HEADER, "")).startswith(key_prefix):
            stamp = _ARRIVAL.match(Path(path).name).group(1)
            found.append((datetime.strptime(stamp, "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC), msg))
    return found


def _wait_arrivals(suite, key_prefix: str, count: int = 1, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        found = _arrivals(suite, key_prefix)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _wait_status(suite, user: User, nid: str, status: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = suite.client.get(f"/v1/notifications/{nid}", headers=user.headers).json()
        if body["status"] == status or time.monotonic() > deadline:
            assert body["status"] == status, body
            return body
        time.sleep(0.1)


# -- POST /v1/notifications ---------------------------------------------------------------


def test_create_with_before_or_send_at(suite, event):
    ann = User(suite)
    resp = _create(suite, ann, event_id=event["id"], before="P1D", message="Buy tickets")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert set(body) == FIELDS
    assert resp.headers["location"].endswith(f"/v1/notifications/{body['id']}")
    assert parse_time(body["send_at"]) == parse_time(event["starts_at"]) - timedelta(days=1)
    assert body["before"] == "P1D" and body["status"] == "scheduled"
    assert body["email"] == ann.email and body["subject"] == "Reminder: Jazz night"
    assert body["message"] == "Buy tickets" and body["attempts"] == 0
    send_at = _in(3600)
    resp = _create(suite, ann, event_id=event["id"], send_at=_iso(send_at), subject="Go!")
    assert resp.status_code == 201, resp.text
    assert resp.json()["before"] is None and resp.json()["subject"] == "Go!"
    assert parse_time(resp.json()["send_at"]) == send_at.replace(microsecond=send_at.microsecond)


def test_create_errors(suite, event):
    ann, bob = User(suite), User(suite)
    eid = event["id"]
    assert "event_id" in _fields(_create(suite, ann, event_id="no-such-event", before="PT1H"))
    assert "send_at" in _fields(_create(suite, ann, event_id=eid, send_at=_iso(_in(-60))))
    assert "before" in _fields(_create(suite, ann, event_id=eid, before="P60D"))
    assert "email" in _fields(_create(suite, ann, event_id=eid, before="PT1H", email=bob.email))
    assert _fields(_create(suite, ann, event_id=eid)) >= {"send_at"}
    assert "before" in _fields(_create(suite, ann, event_id=eid, before="P1M"))
    assert "before" in _fields(_create(suite, ann, event_id=eid, before="-PT1H"))
    assert "send_at" in _fields(_create(suite, ann, event_id=eid, send_at="2030-01-01T10:00:00"))
    assert "extra" in _fields(_create(suite, ann, event_id=eid, before="PT1H", extra=1))
    resp = suite.client.post("/v1/notifications", json={"event_id": eid, "before": "PT1H"})
    _problem(resp, 401)
    listed = suite.client.get("/v1/notifications", headers=ann.headers).json()
    assert listed["items"] == []


def test_only_verified_addresses(suite, event):
    ann = User(suite)
    address = f"{ann.name}.work@example.com"
    resp = suite.client.post("/v1/users/me/emails", json={"email": address}, headers=ann.headers)
    assert resp.status_code == 201, resp.text
    # not verified yet: refused
    assert "email" in _fields(
        _create(suite, ann, event_id=event["id"], before="PT1H", email=address)
    )
    mail = suite.mailbox.wait_for(to=address, subject_contains="Verify", timeout=30)
    token = re.search(r"Verification token: (\S+)", mail.get_body(("plain",)).get_content())
    resp = suite.client.post(
        "/v1/users/me/emails/verify",
        json={"email": address, "token": token.group(1)},
        headers=ann.headers,
    )
    assert resp.status_code == 200, resp.text
    resp = _create(suite, ann, event_id=event["id"], before="PT1H", email=address)
    assert resp.status_code == 201, resp.text
    assert resp.json()["email"] == address


# -- GET /v1/notifications ------------------------------------------------------------------


def test_list_own_soonest_first_filters_and_pages(suite, admin, event):
    ann, bob = User(suite), User(suite)
    other = _event(suite, admin, _in(10 * 86400))
    ids = [
        _create(suite, ann, event_id=event["id"], before=before).json()["id"]
        for before in ("PT1H", "P3D", "P2D")
    ]
    soon = _create(suite, ann, event_id=other["id"], before="PT1H").json()["id"]
    _create(suite, bob, event_id=event["id"], before="PT1H")
    resp = suite.client.get("/v1/notifications", headers=ann.headers)
    assert resp.status_code == 200
    assert [i["id"] for i in resp.json()["items"]] == [soon, ids[1], ids[2], ids[0]]
    resp = suite.client.get(
        "/v1/notifications", params={"event_id": other["id"]}, headers=ann.headers
    )
    assert [i["id"] for i in resp.json()["items"]] == [soon]
    resp = suite.client.get("/v1/notifications", params={"status": "sent"}, headers=ann.headers)
    assert resp.json()["items"] == []
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = suite.client.get("/v1/notifications", params=params, headers=ann.headers).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [soon, ids[1], ids[2], ids[0]]
    for bad in (
        {"limit": 0},
        {"limit": "x"},
        {"status": "nope"},
        {"cursor": "x"},
        {"stat": "sent"},
    ):
        _problem(suite.client.get("/v1/notifications", params=bad, headers=ann.headers), 422)


# -- GET / PATCH / DELETE /v1/notifications/{id} -------------------------------------------


def test_get_patch_delete(suite, event):
    ann = User(suite)
    created = _create(suite, ann, event_id=event["id"], before="PT2H").json()
    path = f"/v1/notifications/{created['id']}"
    assert suite.client.get(path, headers=ann.headers).json() == created
    resp = suite.client.patch(path, json={"delay": "PT30M"}, headers=ann.headers)
    assert resp.status_code == 200, resp.text
    assert parse_time(resp.json()["send_at"]) == parse_time(created["send_at"]) + timedelta(
        minutes=30
    )
    assert resp.json()["before"] == "PT1H30M"
    later = _in(7200)
    resp = suite.client.patch(path, json={"send_at": _iso(later)}, headers=ann.headers)
    assert resp.json()["before"] is None
    resp = suite.client.patch(
        path, json={"before": "P1D", "subject": "Tomorrow!", "message": "Bring cash"},
        headers=ann.headers,
    )  # fmt: skip
    body = resp.json()
    assert body["before"] == "P1D" and body["subject"] == "Tomorrow!"
    assert body["message"] == "Bring cash"
    for bad, field in (
        ({"send_at": _iso(_in(-10))}, "send_at"),
        ({"delay": "P1Y"}, "delay"),
        ({"email": "someone-else@example.com"}, "email"),
        ({"send_at": _iso(later), "before": "PT1H"}, "before"),
        ({"status": "sent"}, "status"),
    ):
        assert field in _fields(suite.client.patch(path, json=bad, headers=ann.headers))
    assert suite.client.get(path, headers=ann.headers).json() == body
    _problem(suite.client.get("/v1/notifications/nope", headers=ann.headers), 404)
    resp = suite.client.delete(path, headers=ann.headers)
    assert resp.status_code == 204
    _problem(suite.client.get(path, headers=ann.headers), 404)
    _problem(suite.client.delete(path, headers=ann.headers), 404)
    _problem(suite.client.patch(path, json={"delay": "PT1M"}, headers=ann.headers), 404)


def test_another_users_reminder_is_404_for_every_method(suite, event):
    ann, bob = User(suite), User(suite)
    created = _create(suite, ann, event_id=event["id"], before="PT1H").json()
    path = f"/v1/notifications/{created['id']}"
    for method, body in (
        ("GET", None),
        ("PATCH", {"delay": "PT5M"}),
        ("PATCH", {"email": bob.email}),
        ("DELETE", None),
    ):
        resp = suite.client.request(method, path, json=body, headers=bob.headers)
        missing = suite.client.request(
            method, "/v1/notifications/no-such-id", json=body, headers=bob.headers
        )
        assert _problem(resp, 404)["detail"] == _problem(missing, 404)["detail"]
    assert suite.client.get("/v1/notifications", headers=bob.headers).json()["items"] == []
    assert suite.client.get(path, headers=ann.headers).json() == created


# -- delivery on time -------------------------------------------------------------------------


def test_a_reminder_arrives_on_time_and_names_the_event(suite, event):
    ann = User(suite)
    resp = _create(
        suite, ann, event_id=event["id"], send_at=_iso(_in(3)), message="Tickets at the door"
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    send_at = parse_time(created["send_at"])
    found = _wait_arrivals(suite, f"reminder:{created['id']}:")
    assert len(found) == 1, "exactly one email"
    arrived, msg = found[0]
    assert send_at <= arrived <= send_at + timedelta(seconds=2), (send_at, arrived)
    assert msg["Subject"] == "Reminder: Jazz night"
    assert ann.email in str(msg["To"])
    text = msg.get_body(("plain",)).get_content()
    starts = parse_time(event["starts_at"])
    assert "Jazz night" in text and "Le Duc" in text and "42 rue des Lombards" in text
    assert f"{starts:%A} {starts.day} {starts:%B %Y, %H:%M} UTC" in text
    assert "Tickets at the door" in text
    assert msg["X-Request-ID"] == resp.headers["x-request-id"]
    sent = _wait_status(suite, ann, created["id"], "sent")
    assert sent["attempts"] >= 1 and parse_time(sent["sent_at"]) >= send_at
    # once sent, it cannot be changed
    resp = suite.client.patch(
        f"/v1/notifications/{created['id']}", json={"delay": "PT5S"}, headers=ann.headers
    )
    _problem(resp, 409)


def test_a_delayed_reminder_arrives_at_the_new_time_only(suite, event):
    ann = User(suite)
    created = _create(suite, ann, event_id=event["id"], send_at=_iso(_in(3))).json()
    old = parse_time(created["send_at"])
    resp = suite.client.patch(
        f"/v1/notifications/{created['id']}", json={"delay": "PT5S"}, headers=ann.headers
    )
    assert resp.status_code == 200, resp.text
    new = parse_time(resp.json()["send_at"])
    assert new == old + timedelta(seconds=5)
    found = _wait_arrivals(suite, f"reminder:{created['id']}:", timeout=20)
    assert len(found) == 1
    arrived, _msg = found[0]
    assert new <= arrived <= new + timedelta(seconds=2), (old, new, arrived)
    time.sleep(0.5)
    assert len(_arrivals(suite, f"reminder:{created['id']}:")) == 1


def test_a_before_reminder_follows_its_event(suite, admin):
    ann = User(suite)
    ev = _event(suite, admin, _in(86400), title="Moving concert")
    created = _create(suite, ann, event_id=ev["id"], before="PT1H").json()
    fixed = _create(suite, ann, event_id=ev["id"], send_at=_iso(_in(3600))).json()
    new_start = parse_time(ev["starts_at"]) + timedelta(hours=3)
    resp = suite.client.patch(
        f"/v1/events/{ev['id']}", json={"starts_at": _iso(new_start)}, headers=admin
    )
    assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + 15
    path = f"/v1/notifications/{created['id']}"
    while parse_time(suite.client.get(path, headers=ann.headers).json()["send_at"]) != (
        new_start - timedelta(hours=1)
    ):
        assert time.monotonic() < deadline, "the reminder did not follow its event"
        time.sleep(0.1)
    again = suite.client.get(f"/v1/notifications/{fixed['id']}", headers=ann.headers).json()
    assert again["send_at"] == fixed["send_at"]  # absolute ones stay


def test_deleting_an_event_cancels_its_reminders_and_tells_the_owner(suite, admin):
    ann = User(suite)
    ev = _event(suite, admin, _in(86400), title="Doomed gig")
    created = _create(suite, ann, event_id=ev["id"], before="PT1H").json()
    assert suite.client.delete(f"/v1/events/{ev['id']}", headers=admin).status_code == 204
    _wait_status(suite, ann, created["id"], "cancelled")
    mail = suite.mailbox.wait_for(to=ann.email, subject_contains="Cancelled", timeout=30)
    assert "Doomed gig" in mail.get_body(("plain",)).get_content()
    resp = suite.client.patch(
        f"/v1/notifications/{created['id']}", json={"delay": "PT1M"}, headers=ann.headers
    )
    _problem(resp, 409)


def test_a_deleted_account_takes_its_reminders_along(suite, event):
    ann = User(suite)
    nid = _create(suite, ann, event_id=event["id"], before="PT1H").json()["id"]
    assert suite.client.delete("/v1/users/me", headers=ann.headers).status_code == 204
    store = SqliteStore(Path(suite.data_dir) / "notifications.sqlite3")
    try:
        deadline = time.monotonic() + 15
        while NotificationsStore(store).collection.get(nid) is not None:
            assert time.monotonic() < deadline, "the reminder outlived its owner"
            time.sleep(0.1)
    finally:
        store.close()
