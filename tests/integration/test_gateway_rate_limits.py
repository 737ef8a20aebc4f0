"""The gateway's rate limits over real HTTP (uvicorn, stand-in services): route classes with the
default settings, limits changed at run time, and buckets shared through the real Redis at
127.0.0.1:6379 (each test under a key prefix of its own) or failing open when it is down."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from devtools.http_doubles import ManualClock, closed_port, running_gateway
from eventpost.settings import Settings
from gateway.ratelimit import EdgePolicy
from gateway.redis_buckets import RedisBuckets

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own in the real Redis, its keys deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    prefix = f"eventpost-test:{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


def _metric(client: httpx.Client, name: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_thirty_wrong_logins_from_one_address_get_429_with_retry_after(fakes):
    with running_gateway(fakes, clock=ManualClock()) as (url, _), httpx.Client(base_url=url) as c:
        wrong = {"username": "ann", "password": "wrong password"}
        answers = [c.post("/v1/auth/token", json=wrong) for _ in range(30)]
        statuses = [a.status_code for a in answers]
        assert statuses == [200] * 10 + [429] * 20  # the stand-in users service says 200
        refused = answers[-1]
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert "sign in or sign up" in refused.json()["detail"]
        assert fakes.users.hits("/v1/auth/token") == 10
        # Sign-up shares the strict bucket; everything else from the address does not.
        assert c.post("/v1/users", json={}).status_code == 429
        assert c.get("/v1/events").status_code == 200
        assert _metric(c, "gateway_rate_limited_total") == 21


@pytest.mark.slow
def test_one_admin_posting_1000_events_gets_no_429_with_the_defaults(fakes):
    # `invoke populate --count 1000`, on a clock that never moves: every request at once.
    token = fakes.mint.token("admin-1", role="admin")
    with running_gateway(fakes, clock=ManualClock()) as (url, _), httpx.Client(base_url=url) as c:
        assert c.post("/v1/auth/token", json={"username": "a", "password": "b"}).status_code == 200
        headers = {"Authorization": f"Bearer {token}"}
        statuses = [
            c.post("/v1/events", json={"title": f"e{i}"}, headers=headers).status_code
            for i in range(1000)
        ]
        assert statuses.count(429) == 0
        assert statuses == [200] * 1000
        assert fakes.events.hits("/v1/events") == 1000


def test_a_token_is_charged_to_its_subject_and_a_bad_one_to_the_address(fakes):
    changes = {"gateway_rate_limit": 0.001, "gateway_rate_burst": 2}
    with (
        running_gateway(fakes, clock=ManualClock(), **changes) as (url, _),
        httpx.Client(base_url=url) as c,
    ):
        assert [c.get("/v1/events").status_code for _ in range(3)] == [200, 200, 429]
        # Same address, but with a valid token: the account's own bucket.
        for user in ("ann", "bob"):
            auth = {"Authorization": f"Bearer {fakes.mint.token(user)}"}
            assert [c.get("/v1/users/me", headers=auth).status_code for _ in range(3)] == [
                200,
                200,
                429,
            ]
        bad = {"Authorization": "Bearer not-a-token"}
        assert c.get("/v1/events", headers=bad).status_code == 429  # the address is spent


def test_limits_change_at_run_time(fakes):
    clock = ManualClock()
    policy = EdgePolicy.from_settings(Settings(service="gateway"), clock)
    with (
        running_gateway(fakes, clock=clock, rate_policy=policy) as (url, _),
        httpx.Client(base_url=url) as c,
    ):
        assert all(c.get("/v1/events").status_code == 200 for _ in range(30))
        policy.set_general(rate=0.001, burst=1)
        assert [c.get("/v1/events").status_code for _ in range(2)] == [200, 429]
        policy.set_general(rate=20, burst=40)
        clock.advance(1)
        assert c.get("/v1/events").status_code == 200


def test_two_gateways_sharing_redis_enforce_one_limit(fakes, redis_prefix):
    changes = {
        "gateway_rate_limit": 0.001,  # no refill during the test
        "gateway_rate_burst": 6,
        "redis_url": REDIS_URL,
        "gateway_redis_prefix": redis_prefix,
    }
    with (
        running_gateway(fakes, **changes) as (first, _),
        running_gateway(fakes, **changes) as (second, _),
        httpx.Client() as c,
    ):
        statuses = [c.get((first, second)[i % 2] + "/v1/events").status_code for i in range(12)]
        assert statuses.count(200) == 6  # once, not twice
        assert statuses[:6] == [200] * 6 and statuses[6:] == [429] * 6
        refused = c.get(first + "/v1/events")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "gateway_ratelimit_redis_up 1.0" in c.get(second + "/metrics").text
    # The buckets are in Redis under the prefix (and expire by themselves).
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(redis_prefix + "*"))
    assert [k.decode() for k in keys] == [redis_prefix + "anonymous:addr:127.0.0.1"]
    assert client.pttl(keys[0]) > 0
    client.close()


def test_redis_down_fails_open_is_logged_once_and_shown_in_metrics(fakes, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.ratelimit")
    changes = {
        "gateway_rate_limit": 0.001,
        "gateway_rate_burst": 1,
        "redis_url": f"redis://127.0.0.1:{closed_port()}/0",
    }
    with (
        running_gateway(fakes, clock=ManualClock(), registry=CollectorRegistry(), **changes) as (
            url,
            _,
        ),
        httpx.Client(base_url=url) as c,
    ):
        statuses = [c.get("/v1/events").status_code for _ in range(10)]
        assert statuses == [200] * 10  # nothing refused, nothing failed
        metrics = c.get("/metrics").text
        assert "gateway_ratelimit_redis_up 0.0" in metrics
        assert _metric(c, "gateway_ratelimit_fail_open_total") == 10
    said = [r for r in caplog.records if "NOT enforced" in r.getMessage()]
    assert len(said) == 1  # once per period, not once per request
    assert "fail open" in said[0].getMessage()


def test_the_redis_script_refills_by_rate_and_says_how_long_to_wait(redis_prefix):
    async def run() -> list:
        buckets = RedisBuckets(REDIS_URL, prefix=redis_prefix)
        await buckets.start()
        try:
            return [
                await buckets.take("k", rate=0.1, burst=2),
                await buckets.take("k", rate=0.1, burst=2),
                await buckets.take("k", rate=0.1, burst=2),  # empty: 1 token in 10 s
                await buckets.take("other", rate=0.1, burst=2),
                await buckets.take("big", rate=0.1, burst=5, cost=6),  # more than it holds
            ]
        finally:
            await buckets.close()

    first, second, third, other, big = asyncio.run(run())
    assert first.allowed and second.allowed and other.allowed
    assert not third.allowed and third.retry_after == 10
    assert not big.allowed and big.retry_after == 10
