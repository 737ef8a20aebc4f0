"""The gateway's default rate limits on the whole suite: one admin populating 1,000 events gets
not a single 429, and 30 wrong logins from one address are stopped with 429 + Retry-After."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from devtools.launcher import ROOT
from tests.e2e._suite import RunningSuite, isolated_vhost, run_suite, suite_env


@pytest.fixture(scope="module")
def default_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSuite]:
    """A suite of its own with the project's default rate limits (the session's suite runs
    with roomy ones)."""
    with isolated_vhost() as amqp_url:
        env = suite_env(tmp_path_factory.mktemp("limits"), amqp_url)
        env.pop("GATEWAY_RATE_LIMIT")
        env.pop("GATEWAY_RATE_BURST")
        yield from run_suite(env)


def _rate_limited(suite: RunningSuite) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in suite.client.get("/metrics").text.splitlines():
        if line.startswith("gateway_rate_limited_total{"):
            label = line.split('route_class="', 1)[1].split('"', 1)[0]
            counts[label] = float(line.rsplit(" ", 1)[1])
    return counts


@pytest.mark.slow
def test_populate_1000_events_as_one_admin_gets_no_429(default_suite):
    suite = default_suite
    suite.create_admin("populator", "populator@example.test", "admin password 1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.populate",
            "--count",
            "1000",
            "--username",
            "populator",
            "--password-stdin",
        ],
        input="admin password 1\n",
        cwd=ROOT,
        env=suite.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert _rate_limited(suite) == {}  # not one request was refused
    page = suite.client.get("/v1/events", params={"limit": 1}).json()
    assert page["items"]


@pytest.mark.slow
def test_thirty_wrong_logins_from_one_address_are_stopped(default_suite):
    suite = default_suite
    acct = suite.sign_up()
    statuses = []
    for _ in range(30):
        resp = suite.client.post(
            "/v1/auth/token", json={"username": acct["username"], "password": "wrong password"}
        )
        statuses.append(resp.status_code)
        last = resp
    assert statuses[0] == 401
    assert statuses[-1] == 429
    assert set(statuses) <= {401, 429}
    assert int(last.headers["Retry-After"]) >= 1
    assert last.headers["Content-Type"] == "application/problem+json"
    assert _rate_limited(suite).get("auth", 0) >= 1  # the gateway's own login class said no
