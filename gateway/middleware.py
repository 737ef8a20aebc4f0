"""The gateway's middleware: its request edge (request ID, ``gateway_*`` metrics, one log line
per request, over :class:`eventpost.web.edge.RequestEdge`), the per-address rate limit, and the
lifespan that opens and closes the upstream connection pool."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import falcon
import falcon.asgi

from eventpost.web.edge import OPS_PATHS, RequestEdge
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import Decision, RateLimiter
from gateway.upstreams import UpstreamClient

log = logging.getLogger("gateway.http")


class GatewayEdge(RequestEdge):
    """The gateway's request edge: counts and times requests by route (the routing table's
    label for forwarded ones), the overhead the gateway added to a forwarded request, and logs
    the upstream and its time with each line (probes and scrapes at DEBUG)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__(log)
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        super().process_request(req, resp)
        req.context.route = None
        req.context.upstream = None
        req.context.upstream_seconds = None

    def record(self, req: falcon.Request, resp: falcon.Response, elapsed: float) -> int | None:
        ctx = req.context
        route = ctx.get("route") or req.uri_template or "unmatched"
        self.metrics.requests_of(route, req.method, str(resp.status_code)).inc()
        self.metrics.request_latency_of(route).observe(elapsed)
        upstream_seconds = ctx.get("upstream_seconds")
        if upstream_seconds is not None:
            self.metrics.overhead.observe(max(0.0, elapsed - upstream_seconds))
        return logging.DEBUG if req.path in OPS_PATHS else logging.INFO

    def log_fields(self, req: falcon.Request) -> dict[str, Any]:
        upstream_seconds = req.context.get("upstream_seconds")
        return {
            "upstream": req.context.get("upstream"),
            "upstream_ms": (
                round(upstream_seconds * 1000, 2) if upstream_seconds is not None else None
            ),
        }


def too_many_requests(decision: Decision, whose: str) -> falcon.HTTPError:
    """The 429 of a refused rate-limit ``decision`` (``whose``: "from this address"...)."""
    return falcon.HTTPTooManyRequests(
        title="Too Many Requests",
        description=f"Too many requests {whose}; slow down.",
        retry_after=decision.retry_after,
    )


def peer_address(req: falcon.asgi.Request) -> str:
    """The address of the TCP peer (never a client-supplied header)."""
    peer = req.context.get("peer")
    if peer is None:
        # ASGI allows any iterable here (unpack it once, remember the result).
        try:
            host, _port = req.scope.get("client")  # type: ignore[misc]
            peer = str(host)
        except (TypeError, ValueError):
            peer = "unknown"
        req.context.peer = peer
    return peer


class RateLimitMiddleware:
    """Per-client-address token buckets (the gateway's own endpoints are exempt)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not self.limiter.enabled or req.path in OPS_PATHS:
            return
        decision = self.limiter.take("addr:" + peer_address(req))
        if not decision.allowed:
            raise too_many_requests(decision, "from this address")


class LifespanMiddleware:
    """Opens the upstream connection pool on ASGI startup and closes it on shutdown."""

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self.client.start()
        log.info("gateway started", extra={"upstreams": sorted(self.client.upstreams)})

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self.client.close()
        log.info("gateway stopped")
