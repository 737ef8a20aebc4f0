"""The notifications HTTP API in-process (Falcon TestClient over create_app, real SqliteStore;
the users and events services answered by a stand-in)."""

from __future__ import annotations

import pytest

from eventpost.errors import Unavailable
from services.notifications.store import NotificationsStore
from tests.unit.test_notifications_support import any_store, api  # noqa: F401 - fixtures

EV = "ev1"


@pytest.fixture
def ann(api):  # noqa: F811
    api.others.add_event(EV, title="Jazz night")
    return api.others.add_user(
        "ann",
        "ann@example.test",
        [("work@example.test", True), ("new@example.test", False)],
    )


@pytest.fixture
def bob(api):  # noqa: F811
    return api.others.add_user("bob", "bob@example.test")


def create(api, token, headers=None, **body):  # noqa: F811
    body.setdefault("event_id", EV)
    if "send_at" not in body and "before" not in body:
        body["before"] = "PT2H"
    return api.call("POST", "/v1/notifications", token, json=body, headers=headers)


# -- POST ---------------------------------------------------------------------------------


def test_create_with_before(api, ann):  # noqa: F811
    resp = create(api, ann, headers={"X-Request-ID": "req-create-1"})
    assert resp.status_code == 201, resp.text
    body = resp.json
    assert resp.headers["Location"] == f"/v1/notifications/{body['id']}"
    assert body["send_at"] == "2026-12-01T17:00:00.000000Z"
    assert body["before"] == "PT2H"
    assert body["status"] == "scheduled"
    assert body["email"] == "ann@example.test"
    assert body["subject"] == "Reminder: Jazz night"
    assert body["message"] is None and body["sent_at"] is None and body["last_error"] is None
    assert body["attempts"] == 0
    assert set(body) == {
        "id", "event_id", "email", "subject", "message", "send_at", "before", "status",
        "attempts", "sent_at", "last_error", "created_at", "updated_at",
    }  # fmt: skip
    # the request ID travelled to both upstream calls
    assert ("event", "req-create-1") in api.others.calls
    assert ("me", "req-create-1") in api.others.calls
    stored = NotificationsStore(api.store).collection.get(body["id"])
    assert stored["owner"] == "ann" and stored["request_id"] == "req-create-1"


def test_create_with_send_at_and_options(api, ann):  # noqa: F811
    resp = create(
        api,
        ann,
        send_at="2026-11-20T10:00:00+02:00",
        email="work@example.test",
        subject="Buy tickets",
        message="Before they sell out",
    )
    assert resp.status_code == 201, resp.text
    body = resp.json
    assert body["send_at"] == "2026-11-20T08:00:00.000000Z"
    assert body["before"] is None
    assert body["email"] == "work@example.test"
    assert body["subject"] == "Buy tickets"
    assert body["message"] == "Before they sell out"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_id": "nope", "before": "PT1H"}, "event_id"),
        ({"event_id": EV, "send_at": "2026-11-01T11:00:00Z"}, "send_at"),
        ({"event_id": EV, "before": "P60D"}, "before"),  # start - 60 days is past
        ({"event_id": EV, "before": "PT1H", "email": "new@example.test"}, "email"),
        ({"event_id": EV, "before": "PT1H", "email": "bob@example.test"}, "email"),
        ({"event_id": EV, "before": "PT1H", "email": "not an address"}, "email"),
        ({"event_id": EV}, "send_at"),
        ({"event_id": EV, "before": "PT1H", "send_at": "2026-11-20T10:00:00Z"}, "send_at"),
        ({"event_id": EV, "before": "P1Y"}, "before"),
        ({"event_id": EV, "before": "-PT1H"}, "before"),
        ({"event_id": EV, "before": "two hours"}, "before"),
        ({"event_id": EV, "before": 7200}, "before"),
        ({"event_id": EV, "send_at": "2026-11-20T10:00:00"}, "send_at"),
        ({"event_id": EV, "before": "PT1H", "subject": "a\nb"}, "subject"),
        ({"event_id": EV, "before": "PT1H", "colour": "red"}, "colour"),
        ({"event_id": {"$ne": None}, "before": "PT1H"}, "event_id"),
    ],
)
def test_create_refuses_invalid(api, ann, body, field):  # noqa: F811
    resp = api.call("POST", "/v1/notifications", ann, json=body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert field in {e["field"] for e in resp.json["errors"]}
    assert NotificationsStore(api.store).collection.count({}) == 0


def test_create_needs_a_token(api, ann):  # noqa: F811
    resp = api.call("POST", "/v1/notifications", json={"event_id": EV, "before": "PT1H"})
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = api.call("POST", "/v1/notifications", "not-a-token", json={"event_id": EV})
    assert resp.status_code == 401


def test_malformed_json_is_400(api, ann):  # noqa: F811
    resp = api.call(
        "POST",
        "/v1/notifications",
        ann,
        body="{nope",
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 400


# -- GET list -----------------------------------------------------------------------------


def test_list_own_soonest_first_with_filters_and_pages(api, ann, bob):  # noqa: F811
    api.others.add_event("ev2", starts_at="2026-11-25T10:00:00Z")
    ids = []
    for before in ("PT1H", "P2D", "PT30M"):
        ids.append(create(api, ann, before=before).json["id"])
    other = create(api, ann, event_id="ev2", before="PT1H").json["id"]
    create(api, bob, before="PT1H")
    resp = api.call("GET", "/v1/notifications", ann)
    assert resp.status_code == 200
    items = resp.json["items"]
    assert [i["id"] for i in items] == [other, ids[1], ids[0], ids[2]]
    assert resp.json["next_cursor"] is None
    # filters
    resp = api.call("GET", "/v1/notifications", ann, params={"event_id": "ev2"})
    assert [i["id"] for i in resp.json["items"]] == [other]
    NotificationsStore(api.store).collection.update(ids[0], {"status": "sent"})
    resp = api.call("GET", "/v1/notifications", ann, params={"status": "sent"})
    assert [i["id"] for i in resp.json["items"]] == [ids[0]]
    # pages
    seen = []
    cursor = None
    while True:
        params = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        page = api.call("GET", "/v1/notifications", ann, params=params).json
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [other, ids[1], ids[0], ids[2]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"statuss": "sent"}, "statuss"),
        ({"status": "lost"}, "status"),
        ({"cursor": "garbage"}, "cursor"),
    ],
)
def test_list_refuses_bad_parameters(api, ann, params, field):  # noqa: F811
    resp = api.call("GET", "/v1/notifications", ann, params=params)
    assert resp.status_code == 422, resp.text
    assert resp.json["errors"][0]["field"] == field


def test_list_clamps_a_limit_over_100(api, ann):  # noqa: F811
    for _ in range(3):
        create(api, ann)
    resp = api.call("GET", "/v1/notifications", ann, params={"limit": "101"})
    assert resp.status_code == 200, resp.text
    assert len(resp.json["items"]) == 3


# -- GET / PATCH / DELETE one -------------------------------------------------------------


def test_get_one(api, ann):  # noqa: F811
    created = create(api, ann).json
    resp = api.call("GET", f"/v1/notifications/{created['id']}", ann)
    assert resp.status_code == 200
    assert resp.json == created
    assert api.call("GET", "/v1/notifications/nope", ann).status_code == 404


def test_patch_each_field(api, ann):  # noqa: F811
    nid = create(api, ann).json["id"]
    path = f"/v1/notifications/{nid}"
    resp = api.call("PATCH", path, ann, json={"delay": "PT5S"})
    assert resp.status_code == 200, resp.text
    assert resp.json["send_at"] == "2026-12-01T17:00:05.000000Z"
    assert resp.json["before"] == "PT1H59M55S"
    resp = api.call("PATCH", path, ann, json={"send_at": "2026-11-15T09:00:00Z"})
    assert resp.json["send_at"] == "2026-11-15T09:00:00.000000Z"
    assert resp.json["before"] is None
    resp = api.call("PATCH", path, ann, json={"before": "P1D"})
    assert resp.json["send_at"] == "2026-11-30T19:00:00.000000Z"
    assert resp.json["before"] == "P1D"
    resp = api.call(
        "PATCH",
        path,
        ann,
        json={"email": "work@example.test", "subject": "Go!", "message": "Bring cash"},
    )
    assert resp.status_code == 200
    assert (resp.json["email"], resp.json["subject"], resp.json["message"]) == (
        "work@example.test",
        "Go!",
        "Bring cash",
    )
    resp = api.call("PATCH", path, ann, json={"subject": None, "message": None})
    assert resp.json["subject"] == "Reminder: Jazz night"
    assert resp.json["message"] is None
    assert api.call("GET", path, ann).json == resp.json


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"send_at": "2026-11-01T11:00:00Z"}, "send_at"),
        ({"delay": "-PT5S"}, "delay"),
        ({"delay": "P1M"}, "delay"),
        ({"before": "P60D"}, "before"),
        ({"email": "new@example.test"}, "email"),
        ({"email": "bob@example.test"}, "email"),
        ({"send_at": "2026-11-15T09:00:00Z", "delay": "PT5S"}, "delay"),
        ({"send_at": None}, "send_at"),
        ({"status": "sent"}, "status"),
        ({"event_id": "ev2"}, "event_id"),
    ],
)
def test_patch_refuses_invalid(api, ann, body, field):  # noqa: F811
    created = create(api, ann).json
    resp = api.call("PATCH", f"/v1/notifications/{created['id']}", ann, json=body)
    assert resp.status_code == 422, resp.text
    assert field in {e["field"] for e in resp.json["errors"]}
    assert api.call("GET", f"/v1/notifications/{created['id']}", ann).json == created


@pytest.mark.parametrize("status", ["sending", "sent", "failed", "cancelled"])
def test_patch_conflicts_once_not_scheduled(api, ann, status):  # noqa: F811
    nid = create(api, ann).json["id"]
    NotificationsStore(api.store).collection.update(nid, {"status": status})
    resp = api.call("PATCH", f"/v1/notifications/{nid}", ann, json={"delay": "PT5S"})
    assert resp.status_code == 409
    assert resp.json["status"] == 409


def test_patch_releases_a_dispatcher_claim(api, ann):  # noqa: F811
    nid = create(api, ann).json["id"]
    coll = NotificationsStore(api.store).collection
    coll.update(nid, {"lease_owner": "d1", "lease_until": "2999-01-01T00:00:00.000000Z"})
    resp = api.call("PATCH", f"/v1/notifications/{nid}", ann, json={"delay": "PT1M"})
    assert resp.status_code == 200
    doc = coll.get(nid)
    assert doc["lease_owner"] is None and doc["lease_until"] < "2000"


def test_delete(api, ann):  # noqa: F811
    nid = create(api, ann).json["id"]
    resp = api.call("DELETE", f"/v1/notifications/{nid}", ann)
    assert resp.status_code == 204
    assert api.call("GET", f"/v1/notifications/{nid}", ann).status_code == 404
    assert api.call("DELETE", f"/v1/notifications/{nid}", ann).status_code == 404


def test_a_sending_reminder_can_be_deleted(api, ann):  # noqa: F811
    nid = create(api, ann).json["id"]
    NotificationsStore(api.store).collection.update(nid, {"status": "sending"})
    assert api.call("DELETE", f"/v1/notifications/{nid}", ann).status_code == 204


# -- BOLA ---------------------------------------------------------------------------------


def test_another_users_reminder_is_404_for_every_method(api, ann, bob):  # noqa: F811
    created = create(api, ann).json
    path = f"/v1/notifications/{created['id']}"
    for method, body in (
        ("GET", None),
        ("PATCH", {"delay": "PT5S"}),
        ("PATCH", {}),
        ("PATCH", {"delay": "bad"}),
        ("DELETE", None),
    ):
        resp = api.call(method, path, bob, json=body)
        missing = api.call(method, "/v1/notifications/does-not-exist", bob, json=body)
        assert resp.status_code == 404, (method, body, resp.text)
        assert resp.json == missing.json
    assert api.call("GET", "/v1/notifications", bob).json["items"] == []
    assert api.call("GET", path, ann).json == created


def test_upstream_down_is_503(api, ann):  # noqa: F811
    def down(*_args, **_kwargs):
        raise Unavailable("events did not answer", headers={"Retry-After": "2"})

    api.others.get_event = down
    resp = create(api, ann)
    assert resp.status_code == 503
    assert resp.headers["Retry-After"] == "2"
    assert NotificationsStore(api.store).collection.count({}) == 0


@pytest.mark.parametrize(
    "send_at",
    ["20271201T200000+0100", "2027-W49-2T20:00:00+01:00", "2027-12-01T20:00+01:00", "2027-12-01"],
)
def test_times_that_are_not_rfc_3339_are_refused(api, ann, send_at):  # noqa: F811
    resp = create(api, ann, send_at=send_at)
    assert resp.status_code == 422, resp.text
    assert resp.json["errors"][0]["field"] == "send_at"
