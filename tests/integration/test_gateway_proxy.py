"""The gateway over real HTTP: uvicorn serving the gateway in a thread, small aiohttp services
standing in for users / events / notifications on free ports of 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from devtools.http_doubles import (
    AiohttpThread,
    FakeServices,
    FakeUpstream,
    ManualClock,
    call,
    closed_port,
    running_gateway,
)
from eventpost.discovery import Discovery
from gateway.ratelimit import RateLimiter
from gateway.upstreams import UpstreamPolicy


@pytest.fixture
def gateway(fakes: FakeServices) -> Iterator[str]:
    with running_gateway(fakes) as (url, _):
        yield url


# --- forwarding --------------------------------------------------------------------------


def test_request_is_forwarded_with_method_path_query_body_and_headers(gateway, fakes):
    body = json.dumps({"username": "ann", "email": "ann@example.com"}).encode()
    answer = call(
        gateway,
        "POST",
        "/v1/users?invite=a%20b&x=1&x=2",
        body=body,
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Accept": "application/json",
            "If-Match": '"v0"',
            "X-Request-ID": "client-req-1",
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-User-Id": "admin",
            "X-Auth-Role": "admin",
            "Cookie": "session=abc",
            "Connection": "keep-alive, X-Secret",
            "X-Secret": "hop",
        },
    )
    assert answer.status == 200, answer.body
    (seen,) = fakes.users.seen
    assert (seen.method, seen.path, seen.query) == ("POST", "/v1/users", "invite=a%20b&x=1&x=2")
    assert seen.body == body
    assert seen.headers["Content-Type"] == "application/json; charset=utf-8"
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["If-Match"] == '"v0"'
    assert seen.headers["X-Request-ID"] == "client-req-1"
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"  # the real peer, not the client's
    assert seen.headers["X-Forwarded-Proto"] == "http"
    for invented in ("X-User-Id", "X-Auth-Role", "Cookie", "X-Secret"):
        assert invented not in seen.headers
    # the answer: status, body and the relevant headers, nothing internal or hop-by-hop
    assert answer.json["upstream"] == "users"
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["ETag"] == '"v1"'
    assert answer.headers["Location"] == "/v1/users/new"
    assert answer.headers["X-Request-ID"] == "client-req-1"
    assert "X-Upstream-Secret" not in answer.headers
    assert "Keep-Alive" not in answer.headers
    assert not fakes.events.seen and not fakes.notifications.seen


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        ("/v1/users", "users"),
        ("/v1/auth/token", "users"),
        ("/v1/auth/jwks?x=1", "users"),
        ("/v1/events", "events"),
        ("/v1/events/e1.ics", "events"),
        ("/v1/notifications", "notifications"),
        ("/v1/notifications/n1", "notifications"),
    ],
)
def test_routing_table(gateway, fakes, path, upstream):
    token = fakes.mint.token()
    answer = call(gateway, "GET", path, headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 200
    if path.startswith("/v1/auth/jwks"):
        assert answer.json == fakes.mint.jwks()
    else:
        assert answer.json["upstream"] == upstream
        assert answer.json["path"] == path.split("?")[0]


def test_percent_encoded_path_is_forwarded_unchanged(gateway, fakes):
    token = fakes.mint.token()
    answer = call(
        gateway,
        "DELETE",
        "/v1/users/me/emails/ann%2Bx%40example.com",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status == 200
    assert fakes.users.seen[-1].path == "/v1/users/me/emails/ann%2Bx%40example.com"


@pytest.mark.parametrize("path", ["/v1/nothing", "/v1/usersX", "/v1/auth", "/v1/events/../users"])
def test_unknown_paths_are_404_problem_json(gateway, fakes, path):
    answer = call(gateway, "GET", path)
    assert answer.status == 404
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json["status"] == 404
    assert answer.headers["X-Request-ID"]
    assert not fakes.users.seen and not fakes.events.seen


def test_405_from_gateway_and_upstream_status_relayed(gateway, fakes):
    wrong = call(gateway, "DELETE", "/health")
    assert wrong.status == 405
    assert wrong.headers["Content-Type"] == "application/problem+json"
    relayed = call(gateway, "GET", "/v1/events/status/429")
    assert relayed.status == 429
    assert relayed.headers["Retry-After"] == "7"
    assert relayed.headers["WWW-Authenticate"] == "Bearer"


def test_request_id_end_to_end(gateway, fakes):
    kept = call(gateway, "GET", "/v1/events", headers={"X-Request-ID": "trace-42"})
    assert kept.headers["X-Request-ID"] == "trace-42"
    assert fakes.events.seen[-1].headers["X-Request-ID"] == "trace-42"
    insane = call(gateway, "GET", "/v1/events", headers={"X-Request-ID": "bad id <script>"})
    new_id = insane.headers["X-Request-ID"]
    assert new_id != "bad id <script>" and len(new_id) == 32
    assert fakes.events.seen[-1].headers["X-Request-ID"] == new_id
    made = call(gateway, "GET", "/v1/events")
    assert made.headers["X-Request-ID"] == fakes.events.seen[-1].headers["X-Request-ID"]


# --- limits ------------------------------------------------------------------------------


def test_body_over_the_limit_is_413_and_not_forwarded(fakes):
    with running_gateway(fakes, max_body_bytes=1000) as (url, _):
        declared = call(url, "POST", "/v1/users", body=b"x" * 1001)
        assert declared.status == 413
        assert declared.headers["Content-Type"] == "application/problem+json"
        streamed = call(url, "POST", "/v1/users", body=b"y" * 5000, chunked=True)
        assert streamed.status == 413
        assert not fakes.users.seen
        fits = call(url, "POST", "/v1/users", body=b"z" * 1000, chunked=True)
        assert fits.status == 200
        assert fakes.users.seen[-1].body == b"z" * 1000


def test_rate_limit_429_with_retry_after(fakes):
    clock = ManualClock()
    with running_gateway(fakes, clock=clock, gateway_rate_limit=2.0, gateway_rate_burst=3) as (
        url,
        _,
    ):
        statuses = [call(url, "GET", "/v1/events").status for _ in range(3)]
        refused = call(url, "GET", "/v1/events")
        assert statuses == [200, 200, 200]
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json["status"] == 429
        assert len(fakes.events.seen) == 3
        clock.advance(0.5)
        assert call(url, "GET", "/v1/events").status == 200


def test_rate_limit_per_authenticated_subject(fakes):
    clock = ManualClock()
    # The address bucket is the same for both users here; give it room.
    roomy = RateLimiter(1.0, 100, clock)
    with running_gateway(
        fakes, clock=clock, address_limiter=roomy, gateway_rate_limit=1.0, gateway_rate_burst=2
    ) as (url, _):
        ann = {"Authorization": f"Bearer {fakes.mint.token('ann')}"}
        bob = {"Authorization": f"Bearer {fakes.mint.token('bob')}"}
        assert [call(url, "GET", "/v1/users/me", headers=ann).status for _ in range(3)] == [
            200,
            200,
            429,
        ]
        assert call(url, "GET", "/v1/users/me", headers=bob).status == 200


# --- upstream failures -------------------------------------------------------------------


def test_upstream_down_is_502(fakes):
    with running_gateway(fakes, ports={"events": closed_port()}) as (url, _):
        answer = call(url, "GET", "/v1/events")
        assert answer.status == 502
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json["status"] == 502
        assert answer.headers["X-Request-ID"]


def test_upstream_that_hangs_is_504(fakes):
    policy = UpstreamPolicy(total_timeout=0.3, connect_timeout=0.3, retries=1)
    with running_gateway(fakes, policies={"events": policy}) as (url, _):
        answer = call(url, "GET", "/v1/events/hang")
        assert answer.status == 504
        assert answer.json["status"] == 504
        assert fakes.events.hits("/hang") == 1  # a timeout is not retried


def test_get_is_retried_after_a_dropped_connection_post_is_not(gateway, fakes):
    fakes.events.drops_left = 1
    got = call(gateway, "GET", "/v1/events/drop")
    assert got.status == 200
    assert fakes.events.hits("/drop") == 2

    fakes.users.drops_left = 1
    posted = call(gateway, "POST", "/v1/users/drop", body=b"{}")
    assert posted.status == 502
    assert fakes.users.hits("/drop") == 1


def test_circuit_opens_after_failures_and_closes_after_cooldown(fakes):
    clock = ManualClock()
    policy = UpstreamPolicy(retries=0, breaker_failures=2, breaker_cooldown=10)
    with running_gateway(fakes, clock=clock, policies={"events": policy}) as (url, _):
        fakes.events.drops_left = 100
        assert [call(url, "GET", "/v1/events/drop").status for _ in range(2)] == [502, 502]
        hits = len(fakes.events.seen)
        paused = call(url, "GET", "/v1/events")
        assert paused.status == 503
        assert paused.headers["Retry-After"] == "10"
        assert paused.json["status"] == 503
        assert len(fakes.events.seen) == hits  # nothing was sent
        # other upstreams are unaffected
        assert call(url, "POST", "/v1/users", body=b"{}").status == 200
        metrics = call(url, "GET", "/metrics").body.decode()
        assert 'gateway_circuit_open{upstream="events"} 1.0' in metrics

        clock.advance(10)
        fakes.events.drops_left = 0
        trial = call(url, "GET", "/v1/events")  # half-open: one trial, it succeeds
        assert trial.status == 200
        assert call(url, "GET", "/v1/events").status == 200
        assert len(fakes.events.seen) == hits + 2


# --- readiness, CORS, metrics, logs -------------------------------------------------------


def test_ready_when_every_upstream_is_ready_else_503_naming_them(gateway, fakes):
    assert call(gateway, "GET", "/ready").status == 200
    assert call(gateway, "GET", "/health").status == 200
    fakes.events.ready_status = 503
    answer = call(gateway, "GET", "/ready")
    assert answer.status == 503
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json["failing"] == ["events"]


def test_ready_503_when_an_upstream_is_down(fakes):
    with running_gateway(fakes, ports={"notifications": closed_port()}) as (url, _):
        answer = call(url, "GET", "/ready")
        assert answer.status == 503
        assert answer.json["failing"] == ["notifications"]


def test_cors_headers_and_preflight(gateway, fakes):
    simple = call(gateway, "GET", "/v1/events", headers={"Origin": "https://app.example"})
    assert simple.headers["Access-Control-Allow-Origin"] == "*"
    assert "X-Request-ID" in simple.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in simple.headers
    preflight = call(
        gateway,
        "OPTIONS",
        "/v1/notifications",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    assert preflight.status in (200, 204)
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert not fakes.notifications.seen


def test_cors_restricted_origins(fakes):
    with running_gateway(fakes, gateway_cors_origins=("https://ok.example",)) as (url, _):
        ok = call(url, "GET", "/v1/events", headers={"Origin": "https://ok.example"})
        assert ok.headers["Access-Control-Allow-Origin"] == "https://ok.example"
        other = call(url, "GET", "/v1/events", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers


def test_metrics_count_routes_and_time_upstreams(gateway, fakes):
    call(gateway, "GET", "/v1/events")
    call(gateway, "GET", "/v1/events/e1")
    call(gateway, "GET", "/v1/none")
    text = call(gateway, "GET", "/metrics").body.decode()
    assert 'gateway_requests_total{method="GET",route="/v1/events",status="200"} 1.0' in text
    assert 'gateway_requests_total{method="GET",route="/v1/events/*",status="200"} 1.0' in text
    assert 'gateway_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'gateway_upstream_duration_seconds_count{upstream="events"} 2.0' in text
    assert "gateway_overhead_seconds_count 2.0" in text


def test_one_log_line_per_request_with_its_fields(gateway, fakes, caplog):
    with caplog.at_level(logging.INFO, logger="gateway.http"):
        call(gateway, "POST", "/v1/users", body=b"{}", headers={"X-Request-ID": "log-me-1"})
    records = [r for r in caplog.records if getattr(r, "request_id", None) == "log-me-1"]
    assert len(records) == 1
    record = records[0]
    assert (record.method, record.path, record.status, record.upstream) == (
        "POST",
        "/v1/users",
        200,
        "users",
    )
    assert record.duration_ms >= record.upstream_ms >= 0


# --- several instances -------------------------------------------------------------------


class ListedDiscovery(Discovery):
    """Instances given by hand (what Consul would answer)."""

    def __init__(self, instances: dict[str, list[str]]) -> None:
        self.listed = instances

    def instances(self, service: str) -> list[str]:
        return list(self.listed.get(service, []))


def test_round_robin_over_instances_and_connect_failures_move_on(fakes):
    second = FakeUpstream("events-2")
    with AiohttpThread(second.app()) as other:
        first_url = f"http://127.0.0.1:{fakes.ports()['events']}"
        dead_url = f"http://127.0.0.1:{closed_port()}"
        urls = {name: [f"http://127.0.0.1:{port}"] for name, port in fakes.ports().items()}
        discovery = ListedDiscovery({**urls, "events": [first_url, other.url]})
        with running_gateway(fakes, discovery=discovery) as (url, _):
            served = [call(url, "GET", "/v1/events").json["upstream"] for _ in range(4)]
            assert sorted(served) == ["events", "events", "events-2", "events-2"]
            assert served[0] != served[1]

            # A dead instance: nothing was sent to it, so even a POST goes on to the next one.
            discovery.listed["events"] = [dead_url, other.url]
            token = fakes.mint.token(role="admin")
            for _ in range(2):
                answer = call(
                    url,
                    "POST",
                    "/v1/events",
                    body=b"{}",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert answer.status == 200
                assert answer.json["upstream"] == "events-2"

            discovery.listed["events"] = []
            none = call(url, "GET", "/v1/events")
            assert none.status == 503
            assert none.json["status"] == 503


def test_a_dead_instance_leaves_the_rotation_until_its_cooldown_ends(fakes, caplog):
    clock = ManualClock()
    live_url = f"http://127.0.0.1:{fakes.ports()['events']}"
    dead_url = f"http://127.0.0.1:{closed_port()}"
    urls = {name: [f"http://127.0.0.1:{port}"] for name, port in fakes.ports().items()}
    discovery = ListedDiscovery({**urls, "events": [dead_url, live_url]})
    policy = UpstreamPolicy(instance_cooldown=5.0)
    caplog.set_level(logging.WARNING, logger="gateway.upstreams")

    def tries_at_dead() -> int:
        return sum(1 for r in caplog.records if f"cannot connect to {dead_url}" in r.getMessage())

    with running_gateway(fakes, discovery=discovery, clock=clock, policies={"events": policy}) as (
        url,
        _,
    ):
        answers = [call(url, "GET", "/v1/events") for _ in range(10)]
        assert [a.status for a in answers] == [200] * 10
        assert tries_at_dead() == 1  # one failed connect, then the live one took every request
        assert len(fakes.events.seen) == 10
        clock.advance(5.0)  # cooldown over: one trial goes to the dead one (and fails over)
        assert [call(url, "GET", "/v1/events").status for _ in range(5)] == [200] * 5
        assert tries_at_dead() == 2
