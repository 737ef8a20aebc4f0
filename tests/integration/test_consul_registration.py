"""Every instance registers in Consul with the documented body, stays registered when the agent
forgets it, and deregisters on SIGTERM before it exits (real processes against the double)."""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from devtools.consul_double import ConsulDouble
from eventpost import consul as ep_consul
from eventpost.consul import Registrar, http_definition, registrar, ttl_definition
from tests.integration.consul_helpers import (
    Proc,
    consul_settings,
    process_env,
    start_gateway,
    start_service,
    until,
)


@pytest.fixture
def consul():
    with ConsulDouble(reap_interval=0.05) as double:
        yield double


# -- the body, field by field -------------------------------------------------------------


def test_http_registration_body_field_by_field(consul):
    settings = consul_settings(
        consul, "events", consul_check_interval=5, consul_check_timeout=2
    ).with_(consul_deregister_after=90)
    reg = registrar(settings, http_definition(settings, "events", "127.0.0.1", 8123))
    reg.register()
    [body] = consul.registrations
    assert list(body) == ["ID", "Name", "Address", "Port", "Tags", "Meta", "Check"]
    assert body["Name"] == "events"
    assert body["ID"].startswith("events-") and str(8123) in body["ID"]
    assert body["Address"] == "127.0.0.1"
    assert body["Port"] == 8123
    assert body["Tags"] == [ep_consul.version()]
    assert body["Meta"] == {"version": ep_consul.version()}
    check = body["Check"]
    assert check["HTTP"] == "http://127.0.0.1:8123/health"
    assert check["Interval"] == "5s"
    assert check["Timeout"] == "2s"
    assert check["DeregisterCriticalServiceAfter"] == "90s"
    assert check["CheckID"] == f"service:{body['ID']}"
    assert consul.checks[check["CheckID"]].status == "critical"  # nothing listens on 8123


def test_ids_are_unique_per_instance(consul):
    settings = consul_settings(consul, "events")
    first = http_definition(settings, "events", "127.0.0.1", 8123)
    second = http_definition(settings, "events", "127.0.0.1", 8123)
    assert first.service_id != second.service_id


def test_service_address_is_registered_when_listening_on_all_addresses(consul):
    settings = consul_settings(consul, "events", service_address="events.internal")
    definition = http_definition(settings, "events", "0.0.0.0", 8002)
    assert definition.address == "events.internal"
    assert definition.check["HTTP"] == "http://events.internal:8002/health"


def test_worker_registration_has_a_ttl_check_passed_while_running(consul):
    settings = consul_settings(consul, "notifications")
    definition = ttl_definition(settings, "dispatcher")
    reg = registrar(settings, definition)
    stop = threading.Event()
    thread = threading.Thread(target=reg.run, args=(stop,))
    thread.start()
    try:
        [body] = until(lambda: consul.registrations)
        assert body["Name"] == "dispatcher"
        assert body["Check"]["TTL"] == "0.6s"  # three resync intervals
        assert body["Check"]["DeregisterCriticalServiceAfter"] == "30s"
        until(lambda: consul.checks[definition.check_id].status == "passing")
    finally:
        stop.set()
        thread.join(10)
    assert consul.service_ids() == []
    assert consul.deregistrations == [definition.service_id]


def test_token_is_sent_as_x_consul_token(monkeypatch):
    # py-consul reads CONSUL_HTTP_TOKEN from os.environ over its argument; the settings win.
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "not-this-one")
    with ConsulDouble(token="s3cret") as consul:
        settings = consul_settings(consul, "events")
        assert settings.consul_http_token == "s3cret"
        reg = registrar(settings, http_definition(settings, "events", "127.0.0.1", 1))
        reg.register()
        assert consul.service_ids("events") == [reg.definition.service_id]
        reg.stop()
        assert consul.service_ids() == []
        registers = [h for m, p, h in consul.requests if p.endswith("/register")]
        assert registers[0]["X-Consul-Token"] == "s3cret"


# -- the agent forgets --------------------------------------------------------------------


def test_registers_again_after_the_agent_restarted_empty(consul):
    settings = consul_settings(consul, "events")
    http = registrar(settings, http_definition(settings, "events", "127.0.0.1", 1)).start()
    ttl = registrar(settings, ttl_definition(settings, "email-sender")).start()
    try:
        until(lambda: len(consul.service_ids()) == 2)
        consul.restart_empty()
        assert consul.service_ids() == []
        until(lambda: len(consul.service_ids()) == 2, what="both instances back")
        assert len(consul.registrations) == 4
    finally:
        http.stop()
        ttl.stop()


def test_consul_down_at_start_then_up_registers(consul):
    consul.go_down()
    settings = consul_settings(consul, "events")
    reg: Registrar = registrar(settings, http_definition(settings, "events", "127.0.0.1", 1))
    reg.start()
    try:
        until(lambda: not reg.registered and reg._thread and reg._thread.is_alive())
        consul.come_back()
        until(lambda: consul.service_ids("events"), what="registered once Consul is back")
    finally:
        reg.stop()


# -- real processes -----------------------------------------------------------------------


@pytest.mark.slow
def test_every_http_part_registers_comes_back_after_an_empty_restart_and_sigterm_deregisters(
    consul, tmp_path
):
    users, users_port = start_service("users", consul, tmp_path)
    events, events_port = start_service("events", consul, tmp_path)
    notifications, notif_port = start_service("notifications", consul, tmp_path)
    gateway, gateway_port = start_gateway(consul, tmp_path)
    procs = [users, events, notifications, gateway]
    expected = {
        "users": users_port,
        "events": events_port,
        "notifications": notif_port,
        "gateway": gateway_port,
    }
    try:
        for name, port in expected.items():
            until(
                lambda name=name, port=port: consul.passing(name) == [f"127.0.0.1:{port}"],
                what=f"{name} passing",
            )
        for body in consul.registrations:
            assert body["Check"]["HTTP"] == f"http://127.0.0.1:{body['Port']}/health"
            assert body["Check"]["Interval"] == "0.2s"

        consul.restart_empty()
        # The agent forgot all four; each asks GET /v1/agent/service/<ID> every 0.2 s here
        # (CONSUL_RESYNC_INTERVAL, 10 s by default: well within 30 s) and registers again.
        for name, port in expected.items():
            until(
                lambda name=name, port=port: consul.passing(name) == [f"127.0.0.1:{port}"],
                what=f"{name} back after the empty restart",
            )

        for proc in procs:
            ids = consul.service_ids(proc.name)
            proc.signal(signal.SIGTERM)
            assert proc.process.wait(20) == 0, proc.log_text()
            assert consul.service_ids(proc.name) == [], proc.log_text()
            assert set(ids) <= set(consul.deregistrations)
    finally:
        for proc in procs:
            proc.stop()


@pytest.mark.slow
@pytest.mark.rabbitmq
def test_a_worker_registers_with_ttl_and_deregisters_on_sigterm(consul, tmp_path):
    env = process_env(consul, tmp_path)
    argv = [sys.executable, "-m", "eventpost.messaging.relay", "--service", "users"]
    relay = Proc("users-relay", argv, env, tmp_path)
    try:
        until(lambda: consul.passing("users-relay"), 30, "users-relay passing its TTL check")
        [body] = [b for b in consul.registrations if b["Name"] == "users-relay"]
        assert "TTL" in body["Check"] and body["Port"] == 0
        consul.restart_empty()
        until(lambda: consul.passing("users-relay"), what="users-relay back (404 on its TTL)")
        relay.signal(signal.SIGTERM)
        assert relay.process.wait(20) == 0, relay.log_text()
        assert consul.service_ids("users-relay") == []
    finally:
        relay.stop()
