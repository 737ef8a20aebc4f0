"""Several hosts (issue 10): three network namespaces on a bridge, each running part of the
suite, every part finding the others only through the Consul double, then one host's link
going down under continuous traffic.

- host A: the gateway; host B: users + events; host C: events + notifications + every worker
  (users-relay, events-relay, notifications-worker, dispatcher, email-sender);
- the root namespace: the Consul double and the SMTP sink on the bridge address, and the
  machine's RabbitMQ (which listens on 127.0.0.1 only) through a TCP forwarder on the bridge
  address, on a virtual host of its own.

Each host has a DATA_DIR of its own (logs, users' signing keys). The SQLite files stand for the
database server every host would reach in production (MongoDB, not installed here): each
host's ``<service>.sqlite3`` is a symbolic link to one shared file, so users on B and the
users-relay on C read the same outbox, and both events instances the same events.

Needs root (``ip netns``); skipped with the reason elsewhere. Run it alone with
``.venv/bin/python -m pytest -q -s -p no:cacheprovider tests/multihost`` (``-s`` shows the
counts it measures)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.consul_double import ConsulDouble
from devtools.launcher import ROOT, free_port, http_status
from devtools.smtp_sink import Mailbox, SmtpSink
from eventpost.serve import server_command
from tests.e2e._suite import isolated_vhost
from tests.integration.consul_helpers import Proc, until
from tests.multihost._net import Host, NetnsUnavailable, TcpForward, hosts

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

WORKERS = {
    "users-relay": ["eventpost.messaging.relay", "--service", "users"],
    "events-relay": ["eventpost.messaging.relay", "--service", "events"],
    "notifications-worker": ["services.notifications.worker"],
    "dispatcher": ["services.notifications.dispatcher"],
    "email-sender": ["email_sender"],
}
STORES = ("users", "events", "notifications")


@dataclass
class Net:
    """What the parts run on: the hosts, the root-namespace services, where files go."""

    bridge: str
    hosts: dict[str, Host]
    consul: ConsulDouble
    amqp_url: str
    smtp_port: int
    tmp: Path
    procs: list[Proc] = field(default_factory=list)

    def env(self, host: Host, **extra: str) -> dict[str, str]:
        """A part's environment on ``host``: Consul, RabbitMQ and SMTP on the bridge, its own
        address and DATA_DIR, no static instance lists."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CONSUL_", "SMTP_", "PYTEST_", "AMQP_", "DATA_DIR"))
            and not k.endswith(("_INSTANCES", "_PORT"))
        }
        env.update(
            {
                "CONSUL_HTTP_ADDR": f"http://{self.bridge}:{self.consul.port}",
                "CONSUL_CHECK_INTERVAL": "1",
                "CONSUL_CHECK_TIMEOUT": "1",
                "CONSUL_RESYNC_INTERVAL": "1",
                "CONSUL_WAIT": "5",
                "CONSUL_DEREGISTER_AFTER": "300",  # longer than the outage: B comes back
                "SERVICE_ADDRESS": host.address,
                "DATA_DIR": str(self.data_dir(host)),
                "AMQP_URL": self.amqp_url,
                "SMTP_HOST": self.bridge,
                "SMTP_PORT": str(self.smtp_port),
                "RETRY_DELAYS": "0.5,1,2",
                "DISPATCH_INTERVAL": "0.2",
                "GATEWAY_RATE_LIMIT": "5000",
                "GATEWAY_RATE_BURST": "10000",
                "GATEWAY_CONNECT_TIMEOUT": "1",
                "GATEWAY_UPSTREAM_TIMEOUT": "3",
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
                "LOG_LEVEL": "INFO",
            }
        )
        env.update(extra)
        return env

    def data_dir(self, host: Host) -> Path:
        """``host``'s DATA_DIR, its SQLite files linked to the shared ones."""
        path = self.tmp / f"host-{host.name}"
        if not path.exists():
            (path / "log").mkdir(parents=True)
            for store in STORES:
                (path / f"{store}.sqlite3").symlink_to(self.tmp / "db" / f"{store}.sqlite3")
        return path

    def start(self, host: Host, name: str, argv: list[str], **extra: str) -> Proc:
        """``argv`` (after the interpreter) run inside ``host``'s namespace."""
        proc = Proc(
            f"{host.name}-{name}",
            host.argv(sys.executable, *argv),
            self.env(host, **extra),
            self.data_dir(host) / "log",
        )
        self.procs.append(proc)
        return proc

    def start_http(self, host: Host, service: str) -> str:
        """An instance of ``service`` on ``host`` (the launcher's server, bound to the host's
        address); waits for /health, returns its URL."""
        port = free_port()
        argv = server_command(service, host.address, port)[1:]
        proc = self.start(host, service, argv, **{f"{service.upper()}_PORT": str(port)})
        return _wait_http(proc, f"http://{host.address}:{port}", "/health")


def _wait_http(proc: Proc, url: str, path: str) -> str:
    until(
        lambda: proc.process.poll() is not None or http_status(url + path) == 200,
        90,
        f"{proc.name} to answer {path}",
    )
    if proc.process.poll() is not None:
        raise AssertionError(f"{proc.name} exited:\n{proc.log_text()}")
    return url


@pytest.fixture
def net(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the multi-host test needs root to make network namespaces")
    (tmp_path / "db").mkdir()
    try:
        with (
            hosts(("a", "b", "c")) as (bridge, found),
            ConsulDouble(host=bridge, reap_interval=0.2) as consul,
            SmtpSink(tmp_path / "mail", host=bridge) as sink,
            isolated_vhost() as amqp_url,
            TcpForward(bridge, ("127.0.0.1", 5672)) as broker,
        ):
            vhost = amqp_url.rsplit("/", 1)[1]
            url = f"amqp://guest:guest@{bridge}:{broker.port}/{vhost}"
            setup = Net(bridge, found, consul, url, sink.port, tmp_path)
            try:
                yield setup
            finally:
                for proc in reversed(setup.procs):
                    proc.stop()
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces cannot be made here: {exc}")


@dataclass
class Sample:
    """One request of the traffic: when it started and ended, its status (None: no answer)."""

    started: float
    ended: float
    status: int | None


class Traffic:
    """Continuous GETs through the gateway from ``threads`` clients in the root namespace."""

    def __init__(self, base_url: str, paths: list[str], threads: int = 4) -> None:
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(base_url, paths), daemon=True)
            for _ in range(threads)
        ]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, base_url: str, paths: list[str]) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status: int | None = client.get(paths[i % len(paths)]).status_code
                except httpx.HTTPError:
                    status = None
                with self._lock:
                    self.samples.append(Sample(started, time.monotonic(), status))
                i += 1

    def count(self) -> int:
        with self._lock:
            return len(self.samples)


def served(instance_url: str) -> int:
    """How many GETs of the events routes an events instance has answered (its /metrics)."""
    text = httpx.get(instance_url + "/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "http_requests_total"
                and sample.labels.get("method") == "GET"
                and str(sample.labels.get("route", "")).startswith("/v1/events")
            ):
                total += sample.value
    return int(total)


def start_suite(net: Net) -> dict[str, str]:
    """Every part on its host; returns the URLs of the HTTP parts (gateway last: it is ready
    once Consul lists every service)."""
    a, b, c = (net.hosts[name] for name in "abc")
    urls = {
        "users": net.start_http(b, "users"),
        "events-b": net.start_http(b, "events"),
        "events-c": net.start_http(c, "events"),
        "notifications": net.start_http(c, "notifications"),
    }
    for name, argv in WORKERS.items():
        net.start(c, name, ["-m", *argv])
    port = free_port()
    gateway = net.start(
        a, "gateway", ["-m", "gateway", "--graceful-timeout", "2"],
        GATEWAY_HOST=a.address, GATEWAY_PORT=str(port),
    )  # fmt: skip
    urls["gateway"] = _wait_http(gateway, f"http://{a.address}:{port}", "/ready")
    return urls


def check_registrations(net: Net, urls: dict[str, str]) -> None:
    """Every part registered in Consul with its host's address, the workers passing."""
    a, b, c = (net.hosts[name] for name in "abc")
    consul = net.consul
    expected = {
        "gateway": [urls["gateway"]],
        "users": [urls["users"]],
        "notifications": [urls["notifications"]],
        "events": sorted((urls["events-b"], urls["events-c"])),
    }
    for name, instances in expected.items():
        want = [url.removeprefix("http://") for url in instances]
        until(lambda name=name, want=want: consul.passing(name) == want, 60, f"{name} passing")
    for name in WORKERS:
        until(lambda name=name: consul.passing(name), 60, f"{name} passing")
        addresses = {s.address for s in consul.services.values() if s.name == name}
        assert addresses == {c.address}, name
    assert {s.address for s in consul.services.values() if s.name == "gateway"} == {a.address}
    assert {s.address for s in consul.services.values() if s.name == "users"} == {b.address}


def sign_up_and_create_event(net: Net, client: httpx.Client) -> str:
    """A sign-up (its welcome email reaches the sink), an event made by an admin, read back,
    and a reminder of it for the new member; the event's id."""
    name = "m" + uuid.uuid4().hex[:10]
    email = f"{name}@example.test"
    body = {"username": name, "email": email, "password": "multi host 1"}
    assert client.post("/v1/users", json=body).status_code == 201
    Mailbox(net.tmp / "mail").wait_for(to=email, subject_contains="Welcome", timeout=60)

    b = net.hosts["b"]
    admin = ["--username", name + "a", "--email", f"{name}a@example.test"]
    subprocess.run(
        b.argv(sys.executable, "-m", "services.users.admin", "create-admin", *admin,
               "--password-stdin"),
        input=b"admin password 1\n", env=net.env(b), cwd=ROOT, check=True,
        capture_output=True, timeout=60,
    )  # fmt: skip
    login = {"username": name + "a", "password": "admin password 1"}
    token = client.post("/v1/auth/token", json=login).json()["access_token"]
    event = {
        "title": "Multi-host night",
        "description": "Three hosts, one drops off.",
        "topics": ["multihost"],
        "starts_at": "2031-06-01T20:00:00+00:00",
        "place": {"name": "Le Duc", "address": "42 rue des Lombards", "lat": 48.86, "lng": 2.35},
    }
    resp = client.post("/v1/events", json=event, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 201, resp.text
    event_id = resp.json()["id"]
    assert client.get(f"/v1/events/{event_id}").status_code == 200
    assert client.get("/v1/events").status_code == 200
    # notifications on C checks the member's token with the users JWKS (B) and the event with
    # events (B or C), both found through Consul
    member = client.post("/v1/auth/token", json={"username": name, "password": "multi host 1"})
    reminder = client.post(
        "/v1/notifications",
        json={"event_id": event_id, "before": "PT1H"},
        headers={"Authorization": f"Bearer {member.json()['access_token']}"},
    )
    assert reminder.status_code == 201, reminder.text
    return event_id


@dataclass
class Outage:
    """What happened around host B's link going down: the traffic and each events
    instance's GETs answered (its own /metrics) at the moments that matter."""

    samples: list[Sample]
    down: float  # B's link went down
    removed: float  # Consul's check of B's events failed: only C's is passing
    served: dict[str, int]

    def windows(self) -> dict[str, list[Sample]]:
        """Requests answered before the cut; in flight or started between the cut and the
        failed check (the transition window); started after the check failed."""
        return {
            "before": [s for s in self.samples if s.ended < self.down],
            "window": [
                s for s in self.samples if s.ended >= self.down and s.started < self.removed
            ],
            "after": [s for s in self.samples if s.started >= self.removed],
        }


def check_users_gone(net: Net, gateway: str) -> None:
    """B's users (its only instance) leaves the passing list too: a login through the gateway
    is a plain 503 problem+json, not a hang."""
    until(lambda: net.consul.passing("users") == [], 30, "B's users critical")
    login = {"username": "nobody", "password": "does not matter"}
    resp = httpx.post(gateway + "/v1/auth/token", json=login, timeout=30)
    assert resp.status_code == 503, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")


def drop_host_b(net: Net, urls: dict[str, str], paths: list[str]) -> Outage:
    """Continuous GETs through the gateway while B's link goes down, then B's link back up
    (the traffic stopped first: the counts stay those of the outage)."""
    b = net.hosts["b"]
    events_b, events_c = urls["events-b"], urls["events-c"]
    counts: dict[str, int] = {}
    with Traffic(urls["gateway"], paths) as traffic:
        counts["b_start"], counts["c_start"] = served(events_b), served(events_c)
        until(lambda: traffic.count() >= 200, 60, "traffic before the cut")
        counts["b_cut"] = served(events_b)
        down = time.monotonic()
        b.link_down()
        only_c = [events_c.removeprefix("http://")]
        until(lambda: net.consul.passing("events") == only_c, 30, "B's events critical")
        counts["c_removed"] = served(events_c)  # before ``removed``: later requests count after
        removed = time.monotonic()
        seen = traffic.count()
        check_users_gone(net, urls["gateway"])
        until(lambda: traffic.count() >= seen + 300, 60, "traffic after the cut")
    counts["c_end"] = served(events_c)
    b.link_up()
    both = sorted(u.removeprefix("http://") for u in (events_b, events_c))
    until(lambda: net.consul.passing("events") == both, 60, "B's events passing again")
    counts["b_back"] = served(events_b)
    # B's instance is back in the gateway's rotation once its own breaker lets a trial through
    # (it failed while B was cut off): GETs until B answers one, every one answered.
    with httpx.Client(base_url=urls["gateway"], timeout=30) as client:

        def b_answers() -> bool:
            assert client.get(paths[0]).status_code == 200
            counts["after_up"] = counts.get("after_up", 0) + 1
            return served(events_b) > counts["b_back"]

        until(b_answers, 60, "B's events answering through the gateway again")
    counts["b_again"] = served(events_b)
    return Outage(list(traffic.samples), down, removed, counts)


def kinds(samples: list[Sample]) -> dict[str, int]:
    """The failed requests among ``samples`` by status (``none``: no answer at all)."""
    found: dict[str, int] = {}
    for sample in samples:
        if sample.status != 200:
            key = str(sample.status or "none")
            found[key] = found.get(key, 0) + 1
    return found


@pytest.mark.timeout(600)
def test_a_host_drops_off_and_the_remaining_hosts_take_over(net):
    begun = time.monotonic()
    urls = start_suite(net)
    check_registrations(net, urls)
    with httpx.Client(base_url=urls["gateway"], timeout=30) as client:
        event_id = sign_up_and_create_event(net, client)

    outage = drop_host_b(net, urls, [f"/v1/events/{event_id}", "/v1/events?limit=5"])

    windows = outage.windows()
    errors = {k: sum(1 for s in group if s.status != 200) for k, group in windows.items()}
    n = outage.served
    print(
        f"\nmulti-host: requests before the cut {len(windows['before'])} "
        f"(errors {errors['before']}), in the transition window {len(windows['window'])} "
        f"(errors {errors['window']}: {kinds(windows['window'])}), "
        f"after B's events left the passing list "
        f"{len(windows['after'])} (errors {errors['after']}); check failed "
        f"{outage.removed - outage.down:.2f} s after the cut; before the cut B answered "
        f"{n['b_cut'] - n['b_start']}, C {n['c_removed'] - n['c_start']} (C: to the failed "
        f"check); after it C answered {n['c_end'] - n['c_removed']}; link up: B answered again "
        f"after {n['after_up']} requests; {time.monotonic() - begun:.0f} s"
    )
    assert errors["before"] == 0
    assert n["b_cut"] > n["b_start"]  # both hosts' events instances had a share before
    assert len(windows["after"]) >= 300
    assert errors["after"] == 0
    assert n["c_end"] - n["c_removed"] >= len(windows["after"])  # all answered by C's
    assert n["b_again"] > n["b_back"]  # B's instance is back in the rotation
