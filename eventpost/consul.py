"""Consul, when ``CONSUL_HTTP_ADDR`` is set: registration of every instance, KV settings.

The client is py-consul (the maintained continuation of python-consul) over its ``requests``
session. Three of its habits are worked around here:

- its ``agent.service.register()`` sends lower-case keys and a ``checks`` list; Consul takes
  both, but the registration body is part of EventPost's contract (API.md), so it is PUT as
  documented (``ID``, ``Name``, ``Address``, ``Port``, ``Tags``, ``Meta``, ``Check``) through
  the client's own HTTP session;
- it reads ``CONSUL_HTTP_TOKEN`` from the process environment over the token it is given;
  the settings already read that variable, so the token is set after construction;
- ``agent.check.ttl_pass`` answers False on a 404 (an agent that forgot the check): that is
  the signal to register again.

An HTTP instance (gateway, users, events, notifications) registers with an HTTP check on
``/health``; a worker (email-sender, dispatcher, relays, notifications-worker) with a TTL
check it passes every ``CONSUL_RESYNC_INTERVAL`` while its loops run. Either way the
:class:`Registrar` makes sure, every ``CONSUL_RESYNC_INTERVAL``, that the agent still knows the
instance (an agent restarted empty forgets everything) and registers it again when not.
Discovery (:mod:`eventpost.discovery`) and the live settings watch build on :func:`agent`.
This module imports no other EventPost module at run time (the settings import it).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

import consul
import requests
from consul.callback import CB

if TYPE_CHECKING:
    from eventpost.messaging.worker import Worker
    from eventpost.settings import Settings

log = logging.getLogger("eventpost.consul")

#: KV prefix of the settings: ``eventpost/config/<VARIABLE>`` overrides that variable.
KV_PREFIX = "eventpost/config/"
#: Settings applied while running (the rest at the next start).
LIVE_SETTINGS = ("GATEWAY_RATE_LIMIT", "GATEWAY_RATE_BURST", "DISPATCH_INTERVAL")
#: Everything a Consul call can fail with: unreachable, hanging (timeout), an error status
#: (py-consul's exceptions), an answer that is not JSON or not the documented shape.
CONSUL_ERRORS = (
    requests.RequestException,
    consul.ConsulException,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
)


def version() -> str:
    """EventPost's version (the tag every instance registers with)."""
    try:
        return metadata.version("eventpost")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def duration(seconds: float) -> str:
    """A Consul (Go) duration: ``10s``, ``0.5s``."""
    return f"{seconds:g}s"


def agent(addr: str, token: str | None, *, timeout: float = 5.0) -> consul.Consul:
    """A py-consul client of the agent at ``addr`` (``http://host:port`` or ``host:port``);
    ``timeout`` bounds every call (a blocking query gets its wait on top)."""
    url = urllib.parse.urlsplit(addr if "//" in addr else "//" + addr)
    client = consul.Consul(
        host=url.hostname or "127.0.0.1",
        port=url.port or 8500,
        scheme=url.scheme or "http",
        connections_timeout=timeout,
    )
    # py-consul prefers os.environ's CONSUL_HTTP_TOKEN to its argument; ours is the settings'.
    client.token = token
    return client


def config_overrides(addr: str, token: str | None, *, timeout: float = 2.0) -> dict[str, str]:
    """The settings in Consul KV (``eventpost/config/<VARIABLE>`` -> value), read once at start.

    Consul unreachable or answering garbage: logged, and nothing overrides the environment
    (a part starts on its environment rather than not at all)."""
    try:
        _, entries = agent(addr, token, timeout=timeout).kv.get(KV_PREFIX, recurse=True)
        found = kv_settings(entries)
    except CONSUL_ERRORS as exc:
        log.warning(
            "Consul KV could not be read; starting on the environment alone",
            extra={"consul": addr, "error": repr(exc)},
        )
        return {}
    if found:
        log.info("settings from Consul KV", extra={"variables": sorted(found)})
    return found


def kv_settings(entries: list[dict[str, Any]] | None) -> dict[str, str]:
    """``{VARIABLE: value}`` of a recursive KV read of :data:`KV_PREFIX` (py-consul decodes
    the values to bytes); folders and empty values are left out."""
    found = {}
    for entry in entries or []:
        name = str(entry["Key"])[len(KV_PREFIX) :]
        value = entry.get("Value")
        if name and "/" not in name and value is not None:
            found[name] = value.decode() if isinstance(value, bytes) else str(value)
    return found


# -- registration ------------------------------------------------------------------------


def instance_id(name: str, address: str, port: int) -> str:
    """A unique ID per instance: name, host, port, pid and a random suffix (two instances on
    one host and port, one after the other, still differ)."""
    suffix = os.urandom(3).hex()
    return f"{name}-{socket.gethostname()}-{address}-{port}-{os.getpid()}-{suffix}"


def advertised_address(settings: Settings, listen_host: str) -> str:
    """The address an instance registers: ``SERVICE_ADDRESS`` when set, else where it listens
    (0.0.0.0 cannot be dialled: then this host's name resolved, and a warning)."""
    if settings.service_address:
        return settings.service_address
    if listen_host in ("", "0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
        resolved = socket.gethostbyname(socket.gethostname())
        log.warning("listening on all addresses without SERVICE_ADDRESS; registering %s", resolved)
        return resolved
    return listen_host


@dataclass(frozen=True)
class Definition:
    """What an instance registers: the body of ``PUT /v1/agent/service/register``."""

    name: str
    service_id: str
    address: str
    port: int
    check: dict[str, str]
    tags: tuple[str, ...] = field(default_factory=lambda: (version(),))

    @property
    def check_id(self) -> str:
        """The check's ID (given, so TTL updates can name it)."""
        return self.check["CheckID"]

    @property
    def is_ttl(self) -> bool:
        return "TTL" in self.check

    def body(self) -> dict[str, Any]:
        """The registration body, field names as Consul documents them."""
        return {
            "ID": self.service_id,
            "Name": self.name,
            "Address": self.address,
            "Port": self.port,
            "Tags": list(self.tags),
            "Meta": {"version": version()},
            "Check": dict(self.check),
        }


def http_definition(settings: Settings, name: str, listen_host: str, port: int) -> Definition:
    """An HTTP instance: a check on ``http://<Address>:<Port>/health``."""
    address = advertised_address(settings, listen_host)
    service_id = instance_id(name, address, port)
    check = {
        "CheckID": f"service:{service_id}",
        "Name": f"{name} /health",
        "HTTP": f"http://{address}:{port}/health",
        "Method": "GET",
        "Interval": duration(settings.consul_check_interval),
        "Timeout": duration(settings.consul_check_timeout),
        "DeregisterCriticalServiceAfter": duration(settings.consul_deregister_after),
    }
    return Definition(name, service_id, address, port, check)


def ttl_definition(settings: Settings, name: str) -> Definition:
    """A worker: a TTL check of three heartbeats (one missed beat does not fail it)."""
    address = settings.service_address or socket.gethostname()
    service_id = instance_id(name, address, 0)
    check = {
        "CheckID": f"service:{service_id}",
        "Name": f"{name} loops running",
        "TTL": duration(3 * settings.consul_resync_interval),
        "DeregisterCriticalServiceAfter": duration(settings.consul_deregister_after),
    }
    return Definition(name, service_id, address, 0, check)


class Registrar:
    """Keeps one instance registered with the agent until told to stop, then deregisters it.

    Every ``resync`` seconds: a TTL instance passes its check (a 404 means the agent forgot
    it: register again and pass); an HTTP instance asks ``GET /v1/agent/service/<ID>`` (404:
    register again). Consul unreachable: logged, tried again next round."""

    def __init__(self, client: consul.Consul, definition: Definition, *, resync: float) -> None:
        self.client = client
        self.definition = definition
        self.resync = resync
        self.registered = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def register(self) -> None:
        """PUT the documented body (raises on failure)."""
        d = self.definition
        headers = {"Content-Type": "application/json", **self.client.prepare_headers()}
        self.client.http.put(
            CB.boolean(),
            "/v1/agent/service/register",
            data=json.dumps(d.body()),
            headers=headers,
        )
        self.registered = True
        log.info(
            "registered in Consul",
            extra={"service": d.name, "service_id": d.service_id, "port": d.port},
        )

    def beat(self) -> None:
        """One round: register when the agent does not know the instance; pass a TTL check."""
        d = self.definition
        with self._lock:
            if self._stop.is_set():
                return
            if not self.registered:
                self.register()
            if d.is_ttl:
                if not self.client.agent.check.ttl_pass(d.check_id, "loops running"):
                    self._forgotten()
                    self.client.agent.check.ttl_pass(d.check_id, "loops running")
                return
            known = self.client.http.get(
                CB.json(allow_404=True),
                f"/v1/agent/service/{urllib.parse.quote(d.service_id, safe='')}",
                headers=self.client.prepare_headers(),
            )
            if known is None:
                self._forgotten()

    def _forgotten(self) -> None:
        log.warning(
            "the Consul agent forgot this instance; registering it again",
            extra={"service": self.definition.name, "service_id": self.definition.service_id},
        )
        self.registered = False
        self.register()

    def deregister(self) -> None:
        """``PUT /v1/agent/service/deregister/<ID>`` (logged, never raises)."""
        d = self.definition
        try:
            self.client.agent.service.deregister(d.service_id)
            self.registered = False
            log.info(
                "deregistered from Consul", extra={"service": d.name, "service_id": d.service_id}
            )
        except CONSUL_ERRORS as exc:
            log.warning(
                "could not deregister from Consul",
                extra={"service_id": d.service_id, "error": repr(exc)},
            )

    def run(self, stop: threading.Event | None = None) -> None:
        """Beat every ``resync`` seconds until ``stop`` (or :meth:`stop`), then deregister:
        the shape of a :class:`~eventpost.messaging.worker.Worker` loop."""
        stop = stop or self._stop
        while not stop.is_set() and not self._stop.is_set():
            try:
                self.beat()
            except CONSUL_ERRORS as exc:
                log.warning(
                    "Consul registration round failed; retrying",
                    extra={"service_id": self.definition.service_id, "error": repr(exc)},
                )
            stop.wait(self.resync)
        self.stop()

    def start(self) -> Registrar:
        """Run in a daemon thread of its own (HTTP instances); returns self."""
        self._thread = threading.Thread(
            target=self.run, name=f"consul:{self.definition.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and deregister (once; safe to call again and from any thread)."""
        with self._lock:
            already = self._stop.is_set()
            self._stop.set()
        if not already:
            self.deregister()


def registrar(settings: Settings, definition: Definition) -> Registrar:
    """A :class:`Registrar` of ``definition`` with the agent of the settings."""
    assert settings.consul_http_addr
    client = agent(settings.consul_http_addr, settings.consul_http_token)
    return Registrar(client, definition, resync=settings.consul_resync_interval)


def register_http(settings: Settings, name: str, listen_host: str, port: int) -> Registrar | None:
    """Register an HTTP instance and keep it registered (a thread); None without Consul."""
    if not settings.consul_http_addr:
        return None
    return registrar(settings, http_definition(settings, name, listen_host, port)).start()


def worker_loop(settings: Settings, name: str) -> Callable[[threading.Event], None] | None:
    """A worker's Consul loop (register with a TTL check, pass it while the worker runs,
    deregister when it stops), for ``Worker.add_loop("consul", ...)``; None without Consul."""
    if not settings.consul_http_addr:
        return None
    return registrar(settings, ttl_definition(settings, name)).run


def attach_to_worker(worker: Worker, settings: Settings, name: str) -> None:
    """With Consul configured, add to ``worker`` the loop that registers it as ``name`` with a
    TTL check, passes the check while the worker runs and deregisters when it stops."""
    loop = worker_loop(settings, name)
    if loop is not None:
        worker.add_loop("consul", loop)
