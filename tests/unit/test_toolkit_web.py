"""The app factory every service is built on: problem+json, request IDs, limits, validation."""

from __future__ import annotations

import json
import logging

import falcon
import falcon.testing
import pytest
from pydantic import Field

from eventpost.settings import Settings
from eventpost.validation import StrictModel, parse_body
from eventpost.web import create_service_app


class Place(StrictModel):
    name: str
    lat: float = Field(ge=-90, le=90)


class Body(StrictModel):
    title: str = Field(min_length=1)
    count: int = 0
    place: Place | None = None


class Store:
    """Records what reached it, to show that refused requests change nothing."""

    def __init__(self) -> None:
        self.saved: list[dict] = []


class Things:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_body(req, Body, self.settings.max_body_bytes)
        self.store.saved.append(body.model_dump())
        resp.status = falcon.HTTP_201
        resp.media = body.model_dump()


class Boom:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise RuntimeError("database password is hunter2")


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def client(store: Store) -> falcon.testing.TestClient:
    settings = Settings.from_env("test", {"MAX_BODY_BYTES": "1024"})

    def not_ready() -> None:
        raise ConnectionError("down")

    app = create_service_app(settings, ready_checks={"broker": not_ready})
    app.add_route("/things", Things(store, settings))
    app.add_route("/boom", Boom())
    return falcon.testing.TestClient(app)


def assert_problem(resp: falcon.testing.Result, status: int) -> dict:
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= set(body)
    return body


def test_health_and_metrics(client):
    assert client.simulate_get("/health").json == {"status": "ok"}
    client.simulate_get("/nothing-here")
    metrics = client.simulate_get("/metrics")
    assert metrics.status_code == 200
    assert 'http_requests_total{method="GET",route="/health",status="200"} 1.0' in metrics.text


def test_ready_names_the_failing_check(client):
    body = assert_problem(client.simulate_get("/ready"), 503)
    assert body["failing"] == ["broker"]
    assert "down" not in json.dumps(body)


def test_not_found_and_method_not_allowed_are_problems(client):
    assert assert_problem(client.simulate_get("/nope"), 404)["title"] == "Not Found"
    assert_problem(client.simulate_delete("/things"), 405)


def test_unhandled_exception_leaks_nothing(client, caplog):
    with caplog.at_level(logging.ERROR):
        resp = client.simulate_get("/boom")
    body = assert_problem(resp, 500)
    assert "hunter2" not in resp.text and "Traceback" not in resp.text
    assert body["detail"]
    assert any("hunter2" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_request_id_is_kept_when_sane_and_replaced_when_not(client):
    assert (
        client.simulate_get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    insane = client.simulate_get("/health", headers={"X-Request-ID": "bad id\n<script>"})
    assert insane.headers["x-request-id"] not in ("bad id\n<script>", "")
    assert len(insane.headers["x-request-id"]) == 32


def test_valid_body_is_accepted(client, store):
    resp = client.simulate_post("/things", json={"title": "x", "place": {"name": "p", "lat": 1.5}})
    assert resp.status_code == 201
    assert store.saved == [{"title": "x", "count": 0, "place": {"name": "p", "lat": 1.5}}]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"", 422, "body"),
        (b"[1, 2]", 422, "body"),
        (b'{"title": "x", "role": "admin"}', 422, "role"),
        (b'{"title": 5}', 422, "title"),
        (b'{"title": "x", "count": "5"}', 422, "count"),
        (b'{"title": {"$ne": null}}', 422, "title"),
        (b'{"title": "x", "place": {"name": {"$gt": ""}, "lat": 1}}', 422, "place.name"),
        (b'{"title": "x", "place": {"name": "p", "lat": 91}}', 422, "place.lat"),
        (b'{"title": ""}', 422, "title"),
    ],
)
def test_bad_bodies_are_refused_and_store_nothing(client, store, body, status, field):
    resp = client.simulate_post("/things", body=body, headers={"Content-Type": "application/json"})
    problem = assert_problem(resp, status)
    if field:
        assert field in [e["field"] for e in problem["errors"]]
    assert store.saved == []


def test_body_over_the_limit_is_413(client, store):
    resp = client.simulate_post("/things", json={"title": "x" * 2000})
    assert_problem(resp, 413)
    assert store.saved == []


def test_wrong_content_type_is_415(client, store):
    resp = client.simulate_post(
        "/things", body=b"title=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert_problem(resp, 415)
    assert store.saved == []


def test_json_answers_are_compact_utf8_and_take_any_integer():
    from eventpost.web import dumps
    from eventpost.web.edge import JSON_MEDIA

    value = {"name": "Café", "n": 2**70, "items": [1.5, None, True]}
    assert dumps(value) == '{"name":"Café","n":1180591620717411303424,"items":[1.5,null,true]}'
    assert json.loads(JSON_MEDIA.serialize({"name": "Café"}, "application/json")) == {
        "name": "Café"
    }


def test_resp_media_goes_through_the_json_of_every_answer(client):
    answer = client.simulate_get("/health")
    assert answer.text == '{"status":"ok"}'
