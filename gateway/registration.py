"""The gateway in Consul (``CONSUL_HTTP_ADDR``): registered while the ASGI app runs, its rate
limits following Consul KV.

On lifespan startup the gateway registers ``GATEWAY_HOST:GATEWAY_PORT`` (or
``SERVICE_ADDRESS``) with an HTTP check on ``/health`` and starts watching
``GATEWAY_RATE_LIMIT`` / ``GATEWAY_RATE_BURST`` in KV; on shutdown (uvicorn's answer to
SIGTERM, after the requests in flight) it deregisters before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from eventpost.consul import Registrar, register_http
from eventpost.live_settings import LiveSettings
from eventpost.settings import Settings

log = logging.getLogger("gateway")


class ConsulLifespan:
    """Falcon ASGI middleware: Consul registration and live limits for the app's lifetime.

    ``set_limits(rate=..., burst=...)`` applies a new ``GATEWAY_RATE_LIMIT`` or
    ``GATEWAY_RATE_BURST`` to the gateway's limiters (the shape of a rate policy's
    ``set_general``)."""

    def __init__(
        self,
        settings: Settings,
        set_limits: Callable[..., None],
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.set_limits = set_limits
        self.env = os.environ if env is None else env
        self.registration: Registrar | None = None
        self.live: LiveSettings | None = None

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        settings = self.settings
        self.registration = await asyncio.to_thread(
            register_http, settings, "gateway", settings.gateway_host, settings.gateway_port
        )
        setters = {
            "gateway_rate_limit": lambda rate: self.set_limits(rate=rate),
            "gateway_rate_burst": lambda burst: self.set_limits(burst=burst),
        }
        self.live = LiveSettings(settings, setters, env=self.env).start()

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self.live is not None:
            self.live.stop()
        if self.registration is not None:
            await asyncio.to_thread(self.registration.stop)
