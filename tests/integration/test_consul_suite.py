"""The whole suite as ``invoke run`` starts it, with ``CONSUL_HTTP_ADDR`` on the Consul double:
every part registers, requests through the gateway reach the services found in Consul (the
gateway's upstreams, the services' JWKS), an agent restarted empty has every part back, and
stopping the suite (SIGTERM to every part) deregisters every one of them."""

from __future__ import annotations

import uuid

import httpx
import pytest

from devtools.consul_double import ConsulDouble
from devtools.launcher import Suite
from tests.e2e._suite import isolated_vhost, suite_env
from tests.integration.consul_helpers import FAST, until

HTTP_PARTS = ("gateway", "users", "events", "notifications")
WORKERS = ("users-relay", "events-relay", "notifications-worker", "dispatcher", "email-sender")

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]


def test_the_suite_on_consul_registers_routes_heals_and_deregisters(tmp_path):
    with ConsulDouble(reap_interval=0.1) as consul, isolated_vhost() as amqp_url:
        env = {**suite_env(tmp_path, amqp_url), **FAST, "CONSUL_HTTP_ADDR": consul.url}
        suite = Suite(env, with_smtp_sink=True, say=lambda line: None)
        suite.start(ready_timeout=120)  # the gateway is ready only once Consul lists them all
        stopped = False
        try:
            for name in HTTP_PARTS:
                # The services are passing once the gateway is ready; the gateway's own check
                # turns passing at its first run by the agent, which may come a moment later.
                port = env[f"{name.upper()}_PORT"]
                until(lambda name=name: consul.passing(name), 30, f"{name} passing")
                assert consul.passing(name) == [f"127.0.0.1:{port}"], name
            for name in WORKERS:
                until(lambda name=name: consul.passing(name), 30, f"{name} passing")

            with httpx.Client(base_url=f"http://127.0.0.1:{env['GATEWAY_PORT']}") as client:
                name = "c" + uuid.uuid4().hex[:10]
                signup = {"username": name, "email": f"{name}@example.com", "password": "pw-" * 4}
                assert client.post("/v1/users", json=signup).status_code == 201
                login = {"username": name, "password": signup["password"]}
                token = client.post("/v1/auth/token", json=login).json()["access_token"]
                auth = {"Authorization": f"Bearer {token}"}
                assert client.get("/v1/users/me", headers=auth).status_code == 200
                # notifications checks the token with the users JWKS it found through Consul
                assert client.get("/v1/notifications", headers=auth).status_code == 200
                assert client.get("/v1/events").status_code == 200

            consul.restart_empty()
            for name in (*HTTP_PARTS, *WORKERS):
                until(lambda name=name: consul.passing(name), 30, f"{name} back")

            suite.stop()
            stopped = True
            assert consul.service_ids() == []
            assert len(set(consul.deregistrations)) == len(HTTP_PARTS) + len(WORKERS)
        finally:
            if not stopped:
                suite.stop()
