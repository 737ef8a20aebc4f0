"""Settings from Consul KV: ``eventpost/config/<VARIABLE>`` overrides the environment at start;
``GATEWAY_RATE_LIMIT``, ``GATEWAY_RATE_BURST`` and ``DISPATCH_INTERVAL`` follow KV while
running; a value that does not parse is logged and the previous one kept."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from devtools.consul_double import ConsulDouble
from devtools.http_doubles import FakeServices, ManualClock, call, running_gateway
from eventpost.discovery import StaticDiscovery
from eventpost.live_settings import LiveSettings
from eventpost.settings import Settings
from gateway.ratelimit import RateLimiter
from tests.integration.consul_helpers import FAST, Proc, consul_settings, process_env, until

KEY = "eventpost/config/"


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(reap_interval=0.05) as double:
        yield double


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeServices]:
    with FakeServices() as services:
        yield services


def _env(consul: ConsulDouble, **extra: str) -> dict[str, str]:
    return {**FAST, "CONSUL_HTTP_ADDR": consul.url, **extra}


# -- at start -----------------------------------------------------------------------------


def test_kv_overrides_the_environment_at_start(consul):
    consul.put_kv(KEY + "DISPATCH_INTERVAL", "7")
    consul.put_kv(KEY + "MAIL_FROM", "Ops <ops@example.com>")
    consul.put_kv(KEY + "GATEWAY_RATE_BURST", "99")
    settings = Settings.from_env("notifications", _env(consul, DISPATCH_INTERVAL="1"))
    assert settings.dispatch_interval == 7
    assert settings.mail_from == "Ops <ops@example.com>"
    assert settings.gateway_rate_burst == 99
    assert settings.smtp_port == 1025  # not in KV: the environment's (default)


def test_a_kv_value_that_does_not_parse_at_start_is_logged_and_the_environment_kept(consul, caplog):
    consul.put_kv(KEY + "GATEWAY_RATE_LIMIT", "abc")
    consul.put_kv(KEY + "GATEWAY_RATE_BURST", "5")
    settings = Settings.from_env("gateway", _env(consul, GATEWAY_RATE_LIMIT="3"))
    assert settings.gateway_rate_limit == 3
    assert settings.gateway_rate_burst == 5
    assert "GATEWAY_RATE_LIMIT='abc' does not parse" in caplog.text


@pytest.mark.parametrize("fault", ["down", "garbage"])
def test_consul_unreachable_at_start_starts_on_the_environment(consul, caplog, fault):
    consul.put_kv(KEY + "DISPATCH_INTERVAL", "7")
    consul.go_down() if fault == "down" else consul.answer_garbage()
    settings = Settings.from_env("notifications", _env(consul, DISPATCH_INTERVAL="2"))
    assert settings.dispatch_interval == 2
    assert "Consul KV could not be read; starting on the environment alone" in caplog.text


def test_the_token_is_sent_for_kv():
    with ConsulDouble(token="t0k") as consul:
        consul.put_kv(KEY + "DISPATCH_INTERVAL", "4")
        env = _env(consul, CONSUL_HTTP_TOKEN="t0k")
        assert Settings.from_env("notifications", env).dispatch_interval == 4
        assert Settings.from_env("notifications", _env(consul)).dispatch_interval == 1


# -- while running ------------------------------------------------------------------------


@pytest.fixture
def gateway(consul, fakes, monkeypatch) -> Iterator[tuple[str, RateLimiter]]:
    """A gateway on the double (it registers and watches KV); its per-address limiter runs on
    a clock that does not move, so a bucket only refills when the test says so. It started
    with GATEWAY_RATE_LIMIT=0 in its environment (where a deleted key goes back to)."""
    monkeypatch.setenv("GATEWAY_RATE_LIMIT", "0")
    limiter = RateLimiter(0, 40, ManualClock())
    # Upstreams at their static addresses: this is about settings, not discovery.
    static = StaticDiscovery(Settings().with_(service_ports=fakes.ports()))
    with running_gateway(
        fakes,
        discovery=static,
        address_limiter=limiter,
        consul_http_addr=consul.url,
        consul_wait=2,
        consul_resync_interval=0.2,
        gateway_rate_limit=0,
    ) as (url, _):
        until(lambda: consul.service_ids("gateway"), what="gateway registered")
        yield url, limiter
    assert consul.service_ids("gateway") == []  # lifespan shutdown deregistered it


def _statuses(url: str, n: int) -> list[int]:
    return [call(url, "GET", "/v1/events").status for _ in range(n)]


def test_gateway_rate_limit_change_in_kv_applies_without_restart_and_back(consul, gateway):
    url, limiter = gateway
    assert set(_statuses(url, 30)) == {200}  # limit off (0)

    started = time.monotonic()
    consul.put_kv(KEY + "GATEWAY_RATE_BURST", "3")
    consul.put_kv(KEY + "GATEWAY_RATE_LIMIT", "1")
    until(lambda: limiter.rate == 1 and limiter.burst == 3, 10, "the new limit applied")
    applied_after = time.monotonic() - started
    statuses = _statuses(url, 10)
    assert 429 in statuses and statuses.count(200) <= 3
    answer = call(url, "GET", "/v1/events")
    assert answer.status == 429 and answer.headers["Retry-After"]

    consul.put_kv(KEY + "GATEWAY_RATE_LIMIT", "0")  # and back: off again
    until(lambda: limiter.rate == 0, 10, "the limit turned off again")
    assert set(_statuses(url, 30)) == {200}
    print(f"KV change applied after {applied_after:.3f} s")


def test_a_deleted_key_puts_back_the_value_the_part_started_with(consul, gateway):
    _, limiter = gateway
    consul.put_kv(KEY + "GATEWAY_RATE_BURST", "2")
    until(lambda: limiter.burst == 2, 10, "burst from KV")
    consul.delete_kv(KEY + "GATEWAY_RATE_BURST")
    until(lambda: limiter.burst == 40, 10, "burst back to the start value")


def test_a_kv_value_that_does_not_parse_is_logged_and_the_previous_kept(consul, gateway, caplog):
    caplog.set_level(logging.INFO, logger="eventpost.consul")
    url, limiter = gateway
    consul.put_kv(KEY + "GATEWAY_RATE_LIMIT", "abc")
    until(lambda: "GATEWAY_RATE_LIMIT='abc' does not parse; keeping 0.0" in caplog.text, 10)
    consul.put_kv(KEY + "GATEWAY_RATE_BURST", "-5")
    until(lambda: "GATEWAY_RATE_BURST='-5' does not parse; keeping 40" in caplog.text, 10)
    assert limiter.rate == 0 and limiter.burst == 40
    assert set(_statuses(url, 30)) == {200}  # still serving, limit still off
    consul.put_kv(KEY + "GATEWAY_RATE_LIMIT", "2")  # a good value after a bad one applies
    until(lambda: limiter.rate == 2, 10)


def test_live_settings_keep_the_values_while_consul_hangs(consul, caplog):
    caplog.set_level(logging.INFO, logger="eventpost.consul")
    settings = consul_settings(consul, "notifications")
    seen: list[float] = []
    from eventpost.consul import agent

    live = LiveSettings(
        settings,
        {"dispatch_interval": seen.append},
        env={},
        client=agent(consul.url, None, timeout=0.3),
        retry=0.1,
    ).start()
    try:
        consul.put_kv(KEY + "DISPATCH_INTERVAL", "0.5")
        until(lambda: seen == [0.5], 10)
        consul.hang()
        until(lambda: "Consul KV watch failed; keeping the current settings" in caplog.text, 10)
        assert live.settings.dispatch_interval == 0.5
        consul.recover()
        consul.put_kv(KEY + "DISPATCH_INTERVAL", "0.25")
        until(lambda: seen == [0.5, 0.25], 10)
    finally:
        live.stop()


@pytest.mark.slow
@pytest.mark.rabbitmq
def test_the_dispatcher_process_takes_dispatch_interval_from_kv_while_running(consul, tmp_path):
    consul.put_kv(KEY + "DISPATCH_INTERVAL", "0.5")  # at start
    env = process_env(consul, tmp_path, DISPATCH_INTERVAL="1")
    proc = Proc(
        "dispatcher", [sys.executable, "-m", "services.notifications.dispatcher"], env, tmp_path
    )
    try:
        until(lambda: consul.passing("dispatcher"), 30, "dispatcher registered, TTL passing")

        def started() -> list[dict]:
            return [r for r in proc.records() if r.get("message") == "dispatcher started"]

        until(started, 10, "the dispatcher's start line")  # INFO lines wait up to 0.2 s
        assert started()[0]["interval"] == 0.5
        consul.put_kv(KEY + "DISPATCH_INTERVAL", "0.2")
        until(
            lambda: "DISPATCH_INTERVAL changed from 0.5 to 0.2 (Consul KV)" in proc.log_text(),
            10,
            "the dispatcher's log saying the change",
        )
    finally:
        assert proc.stop() == 0, proc.log_text()
    assert consul.service_ids("dispatcher") == []


def test_threads_end(consul):
    # LiveSettings.stop ends the watch after its current query (no thread left behind).
    live = LiveSettings(consul_settings(consul), {}, env={}, retry=0.1).start()
    live.stop()
    consul.put_kv("x", "y")  # wakes the blocked query
    assert live._thread is not None
    live._thread.join(5)
    assert not live._thread.is_alive()
    assert threading.active_count() >= 1


def test_a_new_dispatch_interval_cuts_the_wait_in_progress_short(tmp_path):
    """From a 1-hour interval to 0.05 s: the dispatcher does not first sit out the hour."""
    from eventpost.storage.sqlite import SqliteStore
    from services.notifications.dispatcher import ReminderDispatcher

    rounds: list[float] = []

    class Counting(ReminderDispatcher):
        def dispatch_round(self) -> float:
            rounds.append(self.interval)
            return super().dispatch_round()

    store = SqliteStore(tmp_path / "n.sqlite3")
    dispatcher = Counting(store, interval=3600.0)
    stop = threading.Event()
    thread = threading.Thread(target=dispatcher.run, args=(stop,))
    thread.start()
    try:
        until(lambda: rounds == [3600.0], 10, "the first round")
        dispatcher.set_interval(0.05)
        until(lambda: len(rounds) >= 3, 10, "rounds at the new interval")
        assert rounds[1:3] == [0.05, 0.05]
    finally:
        stop.set()
        thread.join(10)
        store.close()
