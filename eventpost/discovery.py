"""Where the services are: one module every caller resolves addresses through.

Without ``CONSUL_HTTP_ADDR`` the addresses are static: ``<SERVICE>_INSTANCES`` (base URLs,
what ``invoke run --replicas`` hands every part), else 127.0.0.1 and each service's port from
the settings. With it, :class:`ConsulDiscovery`: the passing instances of each service from
``GET /v1/health/service/<name>?passing``, kept current by a blocking query in a thread per
service and answered from that cache (a request never waits on Consul, but the first one of
a service waits up to ``first_wait`` seconds for the first answer). An instance that leaves
the list gets no new requests. Consul unreachable, hanging (a timeout of the wait plus a
margin) or answering something that is not the documented JSON: the last list is kept, the
log says so, and the query is tried again every ``retry`` seconds.
"""

from __future__ import annotations

import abc
import itertools
import logging
import threading
from collections.abc import Iterable
from typing import Any

import consul

from eventpost.consul import CONSUL_ERRORS, agent, duration
from eventpost.settings import Settings

log = logging.getLogger(__name__)

SERVICES = ("users", "events", "notifications")


class Discovery(abc.ABC):
    """Resolves a service name to the base URLs of its instances."""

    @abc.abstractmethod
    def instances(self, service: str) -> list[str]:
        """Base URLs (``http://host:port``) of the service's healthy instances."""

    def url(self, service: str) -> str:
        """One base URL of the service: its instances in turn (round-robin), so callers that
        take one URL per call spread over every instance."""
        found = self.instances(service)
        if not found:
            raise LookupError(f"no instance of {service!r} is known")
        # Made on first use: subclasses need not call an __init__ of this class.
        turns = self.__dict__.setdefault("_turns", {})
        turn = turns.setdefault(service, itertools.count())
        return found[next(turn) % len(found)]

    def watch(self, services: Iterable[str]) -> None:  # noqa: B027 - optional hook
        """Start following ``services`` now rather than at their first lookup."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop following (background threads end)."""


class StaticDiscovery(Discovery):
    """The instances ``<SERVICE>_INSTANCES`` lists, else one on ``host`` at the service's
    port from the settings."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1") -> None:
        self.settings = settings
        self.host = host

    def instances(self, service: str) -> list[str]:
        listed = getattr(self.settings, f"{service}_instances", None)
        if listed:
            return list(listed)
        port = self.settings.service_ports.get(service)
        if port is None:
            raise LookupError(f"unknown service {service!r}")
        return [f"http://{self.host}:{port}"]


class _ServiceWatch:
    """The passing instances of one service, kept by a blocking query in a daemon thread."""

    def __init__(self, owner: ConsulDiscovery, service: str) -> None:
        self.owner = owner
        self.service = service
        self.urls: list[str] = []
        self.answered = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"consul-watch:{service}", daemon=True)

    def run(self) -> None:
        index: Any = None
        failing = False
        stop = self.owner.stopped
        while not stop.is_set():
            try:
                new_index, entries = self.owner.client.health.service(
                    self.service, index=index, wait=duration(self.owner.wait), passing=True
                )
                urls = [_entry_url(entry) for entry in entries]
                int(new_index)  # an index that is not a number is not Consul's answer
            except CONSUL_ERRORS as exc:
                log_ = log.warning if not failing else log.debug
                log_(
                    "Consul did not answer for %s; keeping the last list of %d instance(s)",
                    self.service,
                    len(self.urls),
                    extra={"service": self.service, "instances": self.urls, "error": repr(exc)},
                )
                failing = True
                self.answered.set()
                stop.wait(self.owner.retry)
                continue
            if failing:
                log.info("Consul answers again", extra={"service": self.service})
                failing = False
            # Consul: an index that goes backwards (a restarted agent) means start over.
            index = new_index if index is None or int(new_index) >= int(index) else None
            if urls != self.urls:
                log.info(
                    "instances of %s from Consul: %s",
                    self.service,
                    urls,
                    extra={"service": self.service, "instances": urls},
                )
                self.urls = urls
            self.answered.set()


def _entry_url(entry: dict[str, Any]) -> str:
    service = entry["Service"]
    address = service.get("Address") or entry["Node"]["Address"]
    return f"http://{address}:{int(service['Port'])}"


class ConsulDiscovery(Discovery):
    """The passing instances from Consul's health API (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: consul.Consul | None = None,
        first_wait: float = 2.0,
        retry: float = 1.0,
    ) -> None:
        assert settings.consul_http_addr
        self.wait = settings.consul_wait
        self.client = client or agent(settings.consul_http_addr, settings.consul_http_token)
        self.first_wait = first_wait
        self.retry = retry
        self.stopped = threading.Event()
        self._watches: dict[str, _ServiceWatch] = {}
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def _watch(self, service: str) -> _ServiceWatch:
        with self._lock:
            watch = self._watches.get(service)
            if watch is None:
                watch = self._watches[service] = _ServiceWatch(self, service)
                watch.thread.start()
        return watch

    def watch(self, services: Iterable[str]) -> None:
        for service in services:
            self._watch(service)

    def instances(self, service: str) -> list[str]:
        watch = self._watch(service)
        watch.answered.wait(self.first_wait)
        return list(watch.urls)

    def url(self, service: str) -> str:
        """One instance, round-robin over the passing ones."""
        found = self.instances(service)
        if not found:
            raise LookupError(f"no passing instance of {service!r} in Consul")
        return found[next(self._turn) % len(found)]

    def close(self) -> None:
        self.stopped.set()


def discovery_for(settings: Settings) -> Discovery:
    """The discovery the settings ask for: Consul when ``CONSUL_HTTP_ADDR`` is set."""
    if settings.consul_http_addr:
        return ConsulDiscovery(settings)
    return StaticDiscovery(settings)
