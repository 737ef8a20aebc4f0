"""Routing follows Consul: the gateway (and the services' own calls) send requests only to the
instances Consul lists as passing, keep the last list while Consul is down, hangs or answers
garbage, and a SIGKILLed instance costs no client an error."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator

import pytest

from devtools.consul_double import ConsulDouble
from devtools.http_doubles import AiohttpThread, FakeServices, FakeUpstream, call, running_gateway
from eventpost.consul import agent, http_definition, registrar
from eventpost.discovery import ConsulDiscovery, discovery_for
from services.notifications.clients import HttpUpstreams
from tests.integration.consul_helpers import consul_settings, start_service, until


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(reap_interval=0.05) as double:
        yield double


@pytest.fixture
def fakes() -> Iterator[FakeServices]:
    with FakeServices() as services:
        yield services


@pytest.fixture
def second_events() -> Iterator[tuple[FakeUpstream, AiohttpThread]]:
    fake = FakeUpstream("events-2")
    with AiohttpThread(fake.app()) as server:
        yield fake, server


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _register(consul: ConsulDouble, name: str, url: str):
    """Register the server at ``url`` as an instance of ``name`` (HTTP check on /health)."""
    settings = consul_settings(consul, name)
    reg = registrar(settings, http_definition(settings, name, "127.0.0.1", _port(url)))
    return reg.start()


def _discovery(consul: ConsulDouble, *, timeout: float = 5.0) -> ConsulDiscovery:
    settings = consul_settings(consul)
    client = agent(consul.url, None, timeout=timeout)
    return ConsulDiscovery(settings, client=client, retry=0.2)


@pytest.fixture
def registered(consul, fakes, second_events):
    """users, notifications and two events instances registered and passing."""
    regs = [_register(consul, name, fakes.servers[name].url) for name in fakes.NAMES]
    regs.append(_register(consul, "events", second_events[1].url))
    until(lambda: len(consul.passing("events")) == 2 and consul.passing("users"))
    yield regs
    for reg in regs:
        reg.stop()


def test_discovery_for_is_consul_when_consul_http_addr_is_set(consul):
    found = discovery_for(consul_settings(consul))
    assert isinstance(found, ConsulDiscovery)
    found.close()


def test_only_passing_instances_are_listed_and_the_list_follows_consul(
    consul, fakes, second_events, registered
):
    discovery = _discovery(consul)
    try:
        both = sorted([fakes.servers["events"].url, second_events[1].url])
        assert sorted(discovery.instances("events")) == both
        second = registered[-1].definition
        consul.set_status(second.check_id, "critical", hold=True)
        until(lambda: discovery.instances("events") == [fakes.servers["events"].url])
        consul.set_status(second.check_id, "passing")
        until(lambda: sorted(discovery.instances("events")) == both)
    finally:
        discovery.close()


def test_when_consul_lists_one_events_instance_every_request_goes_there(
    consul, fakes, second_events, registered
):
    discovery = _discovery(consul)
    consul.set_status(registered[-1].definition.check_id, "critical", hold=True)
    until(lambda: len(discovery.instances("events")) == 1)
    with running_gateway(fakes, discovery=discovery, gateway_rate_limit=0) as (url, _):
        statuses = [call(url, "GET", f"/v1/events?n={i}").status for i in range(40)]
    discovery.close()
    assert statuses == [200] * 40
    assert fakes.events.hits("/v1/events") == 40
    assert second_events[0].hits("/v1/events") == 0


def test_both_passing_instances_share_the_requests(consul, fakes, second_events, registered):
    discovery = _discovery(consul)
    with running_gateway(fakes, discovery=discovery, gateway_rate_limit=0) as (url, _):
        statuses = [call(url, "GET", "/v1/events").status for _ in range(40)]
    discovery.close()
    assert statuses == [200] * 40
    assert fakes.events.hits("/v1/events") == 20
    assert second_events[0].hits("/v1/events") == 20


def test_notifications_calls_to_events_resolve_through_consul(consul, fakes, registered):
    discovery = _discovery(consul)
    try:
        event = HttpUpstreams(discovery).get_event("ev1", request_id="r1")
        assert event["path"] == "/v1/events/ev1"
    finally:
        discovery.close()


# -- Consul in trouble: the last list is kept ---------------------------------------------


def _keeps_serving(url: str, fakes: FakeServices, until_done, n_min: int = 20) -> list[int]:
    """GETs through the gateway until ``until_done()`` (at least ``n_min``); their statuses."""
    statuses = []
    while len(statuses) < n_min or not until_done():
        statuses.append(call(url, "GET", "/v1/events").status)
    return statuses


@pytest.mark.parametrize("fault", ["down", "garbage", "hang"])
def test_consul_in_trouble_keeps_the_last_list_and_says_so(
    consul, fakes, second_events, registered, caplog, fault
):
    caplog.set_level(logging.INFO, logger="eventpost.discovery")
    # A short client timeout, so a hanging agent is noticed in ~1 s (wait 2 s + 0.3 s here;
    # the production timeout is 5 s on top of CONSUL_WAIT).
    discovery = _discovery(consul, timeout=0.3)
    until(lambda: len(discovery.instances("events")) == 2)

    said = "Consul did not answer for events; keeping the last list of 2 instance(s)"

    def said_so() -> bool:
        return any(said in r.getMessage() for r in caplog.records)

    with running_gateway(fakes, discovery=discovery, gateway_rate_limit=0) as (url, _):
        {"down": consul.go_down, "garbage": consul.answer_garbage, "hang": consul.hang}[fault]()
        during = _keeps_serving(url, fakes, said_so)
        assert len(discovery.instances("events")) == 2
        {"down": consul.come_back, "garbage": consul.recover, "hang": consul.recover}[fault]()
        after = _keeps_serving(url, fakes, lambda: True)
    discovery.close()
    assert set(during) == {200} and set(after) == {200}
    assert fakes.events.hits("/v1/events") > 0 and second_events[0].hits("/v1/events") > 0
    assert said_so()


@pytest.mark.slow
def test_consul_down_for_a_while_costs_no_client_an_error(consul, fakes, registered):
    """Consul unreachable for 10 s of traffic (on the real clock: the list must hold over
    several failed queries and retries), then back: 0 errors, and the list is followed again."""
    discovery = _discovery(consul)
    until(lambda: len(discovery.instances("events")) == 2)
    with running_gateway(fakes, discovery=discovery, gateway_rate_limit=0) as (url, _):
        consul.go_down()
        stop = threading.Timer(10.0, lambda: None)
        stop.start()
        during = _keeps_serving(url, fakes, lambda: not stop.is_alive())
        consul.come_back()
        registered[-1].stop()  # the second events instance leaves: followed again
        until(lambda: len(discovery.instances("events")) == 1)
        after = _keeps_serving(url, fakes, lambda: True)
    discovery.close()
    assert set(during) == {200}, f"{len(during)} requests, errors: {during.count(200)}"
    assert set(after) == {200}
    print(f"Consul down 10 s: {len(during)} GETs during, {len(after)} after, client errors 0")


# -- an instance SIGKILLed under load -----------------------------------------------------


class Load:
    """Clients sending GETs through the gateway in threads, every answer recorded."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.done = [0] * clients  # requests finished, per client
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, client: int) -> None:
        while not self.stopped.is_set():
            try:
                status = call(self.url, "GET", "/v1/events?limit=1").status
            except OSError:
                status = 0
            self.statuses.append(status)
            self.done[client] += 1

    def settled(self, done: list[int]) -> bool:
        """Whether every client finished a request started after ``done`` was taken (so no
        request begun before then is still in flight)."""
        return all(now >= then + 2 for now, then in zip(self.done, done, strict=True))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(30)


@pytest.mark.slow
def test_an_instance_killed_under_load_gets_no_traffic_once_its_check_fails(
    consul, fakes, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="gateway.upstreams")
    users = _register(consul, "users", fakes.servers["users"].url)
    first, first_port = start_service("events", consul, tmp_path, name="events-1")
    second, second_port = start_service("events", consul, tmp_path, name="events-2")
    discovery = _discovery(consul)
    try:
        until(lambda: len(discovery.instances("events")) == 2, what="both events passing")
        victim = f"http://127.0.0.1:{second_port}"
        gateway = running_gateway(fakes, discovery=discovery, gateway_rate_limit=0)
        with gateway as (url, _), Load(url) as load:
            until(lambda: len(load.statuses) >= 60, what="load running")
            second.signal(signal.SIGKILL)
            until(lambda: victim not in discovery.instances("events"), what="check failed")
            done = list(load.done)
            until(lambda: load.settled(done), what="requests in flight at the change finished")
            # From here on, every request started after Consul's list changed.
            failed_at = len(load.statuses)
            tried_before = _tried(caplog, victim)
            until(lambda: len(load.statuses) >= failed_at + 200, 60, "load after the failure")
        after = load.statuses[failed_at:]
        assert after.count(200) == len(after), f"errors after the check failed: {after}"
        assert _tried(caplog, victim) == tried_before  # no new request went to the dead one
        # Requests in flight at the kill, and those sent before the check failed, were retried
        # on the other instance (GETs are idempotent): no client saw an error at all.
        assert set(load.statuses) == {200}, (sorted(set(load.statuses)), _errors(first))
        assert discovery.instances("events") == [f"http://127.0.0.1:{first_port}"]
        print(
            f"SIGKILL under load: {len(load.statuses)} GETs, {failed_at} before the check "
            f"failed, {len(after)} after; {tried_before} tries failed on the dead instance "
            "and were retried; client errors 0"
        )
    finally:
        discovery.close()
        users.stop()
        first.stop()
        second.stop()


def _errors(proc) -> list[str]:
    """The log lines of ``proc`` at ERROR level or about a 5xx answer (for a failure's message)."""
    return [
        line
        for line in proc.log_text().splitlines()
        if '"level":"ERROR"' in line or '"status":5' in line
    ]


def _tried(caplog, base: str) -> int:
    return sum(1 for r in caplog.records if base in r.getMessage())
