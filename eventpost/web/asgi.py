"""The shared edge (:mod:`eventpost.web.edge`) for a Falcon ASGI app, the gateway: coroutine
ops resources and error handlers around the same logic the WSGI services use. Install it with
``install_edge(app, ASGI_EDGE, ...)``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import falcon.asgi
from prometheus_client import CollectorRegistry

from eventpost.web.edge import EdgeAdapter, render_health, render_metrics, render_ready

#: A readiness check of an ASGI app: passes unless it raises.
AsyncReadyCheck = Callable[[], Awaitable[object]]


class AsyncHealthResource:
    """``GET /health``: 200 while the process lives."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        render_health(resp)


class AsyncReadyResource:
    """``GET /ready``: 200 when every check passes, 503 naming the ones that fail; the checks
    run concurrently."""

    def __init__(self, checks: Mapping[str, AsyncReadyCheck]) -> None:
        self.checks = checks

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        names = list(self.checks)
        results = await asyncio.gather(
            *(check() for check in self.checks.values()), return_exceptions=True
        )
        errors = {
            name: result
            for name, result in zip(names, results, strict=True)
            if isinstance(result, Exception)
        }
        render_ready(resp, names, errors)


class AsyncMetricsResource:
    """``GET /metrics``: Prometheus text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        render_metrics(resp, self.registry)


def as_coroutine(handler: Callable[..., None]) -> Callable[..., Awaitable[None]]:
    """A sync Falcon error handler as the coroutine an ASGI app requires."""

    async def handle(req: Any, resp: Any, exc: Exception, params: dict) -> None:
        handler(req, resp, exc, params)

    return handle


#: The edge's parts for an ASGI app.
ASGI_EDGE = EdgeAdapter(
    health=AsyncHealthResource,
    ready=AsyncReadyResource,
    metrics=AsyncMetricsResource,
    handler=as_coroutine,
)
