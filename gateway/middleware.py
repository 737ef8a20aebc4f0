"""The gateway's middleware: its request edge (request ID, ``gateway_*`` metrics, one log line
per request, over :class:`eventpost.web.edge.RequestEdge`), the per-address rate limits (login
and sign-up, anonymous requests; :mod:`gateway.ratelimit`), and the lifespan that opens and
closes the upstream connection pool and the rate-limit store."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import falcon
import falcon.asgi

from eventpost.web.edge import OPS_PATHS, RequestEdge
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import Decision, EdgePolicy
from gateway.upstreams import UpstreamClient

log = logging.getLogger("gateway.http")

# The ``auth`` route class: login and sign-up, limited strictly per client address.
AUTH_ROUTES = frozenset({("POST", "/v1/auth/token"), ("POST", "/v1/users")})

WHOSE = {
    "auth": "to sign in or sign up from this address",
    "anonymous": "from this address",
    "user": "for this account",
    "admin": "for this account",
}


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


def route_class(method: str, path: str) -> str | None:
    """``"auth"`` for login and sign-up, ``None`` for every other request."""
    return "auth" if (method, path.rstrip("/") or "/") in AUTH_ROUTES else None


async def charge(
    policy: EdgePolicy,
    metrics: GatewayMetrics,
    req: falcon.asgi.Request,
    limit_class: str,
    key: str,
) -> None:
    """Take one token of ``limit_class`` for ``key``; raises the 429 when there is none. A
    request is charged once (:attr:`req.context.rate_charged`)."""
    req.context.rate_charged = True
    decision = await policy.check(limit_class, key)
    if not decision.allowed:
        metrics.rate_limited.labels(limit_class).inc()
        raise too_many_requests(decision, WHOSE[limit_class])


class RateLimitMiddleware:
    """The per-address classes: ``auth`` (login, sign-up) and ``anonymous`` (no token); a
    request with a token is charged to its subject by the proxy once the token is verified
    (the gateway's own endpoints are exempt)."""

    def __init__(self, policy: EdgePolicy, metrics: GatewayMetrics) -> None:
        self.policy = policy
        self.metrics = metrics

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.rate_charged = False
        if req.path in OPS_PATHS:
            return
        if route_class(req.method, req.path) == "auth":
            await charge(self.policy, self.metrics, req, "auth", "addr:" + peer_address(req))
        elif req.get_header("Authorization") is None:
            await charge(self.policy, self.metrics, req, "anonymous", "addr:" + peer_address(req))


class LifespanMiddleware:
    """Opens the upstream connection pool (and the rate-limit store) on ASGI startup and
    closes them on shutdown."""

    def __init__(self, client: UpstreamClient, policy: EdgePolicy | None = None) -> None:
        self.client = client
        self.policy = policy

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self.client.start()
        if self.policy is not None:
            await self.policy.start()
        log.info("gateway started", extra={"upstreams": sorted(self.client.upstreams)})

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self.client.close()
        if self.policy is not None:
            await self.policy.close()
        log.info("gateway stopped")
