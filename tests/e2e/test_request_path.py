"""Issue 2's first path through the whole system: sign-up through the gateway, the welcome
email in the SMTP sink, one request ID in the email and in every process's log on the way;
and bad input refused at the edge with nothing stored."""

from __future__ import annotations

import time
import uuid

import pytest

PASSWORD = "correct horse 1"


def _wait_for_log(suite, part: str, request_id: str, timeout: float = 5.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in suite.logs(part) if r.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_sign_up_reaches_the_inbox_with_one_request_id_end_to_end(suite):
    name = f"path{uuid.uuid4().hex[:8]}"
    request_id = f"e2e-{uuid.uuid4().hex}"
    started = time.monotonic()
    resp = suite.client.post(
        "/v1/users",
        json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        headers={"X-Request-ID": request_id},
    )
    assert resp.status_code == 201, resp.text
    assert resp.headers["X-Request-ID"] == request_id
    mail = suite.mailbox.wait_for(to=f"{name}@example.com", subject_contains="Welcome", timeout=5.0)
    assert time.monotonic() - started < 5.0
    assert mail["X-Request-ID"] == request_id
    assert mail["Message-ID"]
    for part in ("gateway", "users", "users-relay", "email-sender"):
        records = _wait_for_log(suite, part, request_id)
        assert records, f"no log line of {part} carries the request ID"
        assert all(r["service"] for r in records)


def _assert_problem(resp, status: int) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status
    assert "Traceback" not in resp.text


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"username": "x", ', 400),  # malformed JSON
        (b'{"username": 5, "email": "a@b.test", "password": "long enough"}', 422),
        (b'{"username": "NAME", "email": "a@b.test", "password": "long enough", "x": 1}', 422),
        (b'{"username": {"$ne": null}, "email": "a@b.test", "password": "long enough"}', 422),
        (b'{"username": "NAME", "email": {"$ne": null}, "password": "long enough"}', 422),
        (b'{"username": "NAME", "email": "a@b.test", "password": {"$gt": ""}}', 422),
    ],
)
def test_bad_input_is_refused_and_stores_nothing(suite, raw, status):
    name = f"bad{uuid.uuid4().hex[:8]}"
    resp = suite.client.post(
        "/v1/users",
        content=raw.replace(b"NAME", name.encode()),
        headers={"Content-Type": "application/json"},
    )
    _assert_problem(resp, status)
    # Nothing was stored: the same name and address can still sign up.
    ok = suite.client.post(
        "/v1/users", json={"username": name, "email": f"{name}@b.test", "password": PASSWORD}
    )
    assert ok.status_code == 201, ok.text


def test_a_body_over_the_limit_is_413_at_the_edge(suite):
    name = f"big{uuid.uuid4().hex[:8]}"
    resp = suite.client.post(
        "/v1/users",
        json={"username": name, "email": f"{name}@b.test", "password": "x" * (70 * 1024)},
    )
    _assert_problem(resp, 413)
    assert [
        r
        for r in suite.logs("users")
        if r.get("path") == "/v1/users" and r.get("request_id") == resp.headers["X-Request-ID"]
    ] == []
    ok = suite.client.post(
        "/v1/users", json={"username": name, "email": f"{name}@b.test", "password": PASSWORD}
    )
    assert ok.status_code == 201


def test_unknown_paths_and_methods_are_problems(suite):
    _assert_problem(suite.client.get("/v1/nothing"), 404)
    _assert_problem(suite.client.get("/v1/users"), 405)
    for part in ("/health", "/ready"):
        assert suite.client.get(part).status_code == 200
    assert "gateway_requests_total" in suite.client.get("/metrics").text
