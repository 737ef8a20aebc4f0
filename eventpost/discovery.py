"""Where the services are: one module every caller resolves addresses through.

Without ``CONSUL_HTTP_ADDR`` the addresses are static: ``<SERVICE>_INSTANCES`` (base URLs,
what ``invoke run --replicas`` hands every part), else 127.0.0.1 and each service's port from
the settings. Consul (``CONSUL_HTTP_ADDR``) is not built yet: with it set, a warning is
logged and the static addresses are used.
"""

from __future__ import annotations

import abc
import itertools
import logging

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


def discovery_for(settings: Settings) -> Discovery:
    """The discovery the settings ask for."""
    if settings.consul_http_addr:
        # Consul support is not built yet: say so rather than pretend to use it.
        log.warning(
            "CONSUL_HTTP_ADDR is set but Consul discovery is not built yet; "
            "using static addresses on 127.0.0.1"
        )
    return StaticDiscovery(settings)
