"""The API gateway: one Falcon ASGI app in front of the users, events and notifications services.

``create_app`` is the only wiring. Per request, in order: the request edge (request ID, metrics,
log line; :mod:`gateway.middleware`), CORS, the per-address rate limit, then the proxy
(:mod:`gateway.proxy`: route lookup, preflight, body limit, token check, per-subject rate limit,
forwarding). Errors answer problem+json and the gateway answers ``/health``, ``/ready`` (every
upstream ready) and ``/metrics`` itself, through the edge the services share
(:mod:`eventpost.web`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import falcon
import falcon.asgi
from prometheus_client import CollectorRegistry

from eventpost.discovery import SERVICES, Discovery, discovery_for
from eventpost.logs import request_id_var
from eventpost.settings import Settings
from eventpost.web import REQUEST_ID_HEADER
from eventpost.web.asgi import ASGI_EDGE
from eventpost.web.edge import install_edge
from gateway.auth import EdgeVerifier
from gateway.metrics import GatewayMetrics
from gateway.middleware import GatewayEdge, LifespanMiddleware, RateLimitMiddleware
from gateway.proxy import Proxy
from gateway.ratelimit import RateLimiter
from gateway.registration import ConsulLifespan
from gateway.upstreams import UpstreamClient, UpstreamPolicy

log = logging.getLogger("gateway.http")

# Headers a browser script may read on the gateway's answers.
EXPOSED_HEADERS = ("X-Request-ID", "Location", "ETag", "Retry-After", "WWW-Authenticate")

#: How an ASGI server must run the app (``python -m gateway`` and the test servers do). The
#: gateway is the edge: the TCP peer is the client, so a client's own X-Forwarded-For must never
#: rewrite its address (the gateway sets that header itself for the services); it writes its
#: own access log lines, and the lifespan opens and closes the upstream pool.
UVICORN_OPTIONS: dict[str, Any] = {
    "lifespan": "on",
    "proxy_headers": False,
    "server_header": False,
    "access_log": False,
    "log_config": None,
}


def create_app(
    settings: Settings,
    *,
    discovery: Discovery | None = None,
    clock: Callable[[], float] = time.monotonic,
    policies: Mapping[str, UpstreamPolicy] | None = None,
    registry: CollectorRegistry | None = None,
    jwks_min_refetch: float = 5.0,
    address_limiter: RateLimiter | None = None,
    env: Mapping[str, str] | None = None,
) -> falcon.asgi.App:
    """The gateway app. ``discovery`` finds the upstreams (default: ``discovery_for(settings)``),
    ``clock`` (monotonic seconds) drives rate limits, circuit breakers and the JWKS cache,
    ``policies`` overrides timeouts/retries/breaker per upstream, ``registry`` holds the
    metrics, ``address_limiter`` replaces the per-address buckets made from the settings.
    With ``CONSUL_HTTP_ADDR`` the gateway registers in Consul and follows its rate limits in
    KV (``env``: the environment it started from, where a deleted key goes back to).
    Nothing connects until the ASGI lifespan starts."""
    registry = registry or CollectorRegistry()
    metrics = GatewayMetrics(registry)
    client = UpstreamClient(
        discovery or discovery_for(settings),
        SERVICES,
        clock=clock,
        default_policy=UpstreamPolicy(
            connect_timeout=settings.gateway_connect_timeout,
            total_timeout=settings.gateway_upstream_timeout,
        ),
        policies=policies,
        observe=metrics.observe_upstream,
    )
    verifier = EdgeVerifier(jwks_fetcher(client), clock=clock, min_refetch_seconds=jwks_min_refetch)
    rate, burst = settings.gateway_rate_limit, settings.gateway_rate_burst
    address_limiter = address_limiter or RateLimiter(rate, burst, clock)
    subject_limiter = RateLimiter(rate, burst, clock)
    middleware: list[Any] = [
        LifespanMiddleware(client),
        GatewayEdge(metrics),
        cors_middleware(settings),
        RateLimitMiddleware(address_limiter),
    ]
    if settings.consul_http_addr:
        limiters = (address_limiter, subject_limiter)
        middleware.insert(1, ConsulLifespan(settings, limit_setter(limiters), env=env))
    app = falcon.asgi.App(middleware=middleware)
    install_edge(
        app,
        ASGI_EDGE,
        logger=log,
        failure_detail="The gateway failed; the error was logged.",
        ready_checks=client.ready_checks(),
        registry=registry,
    )
    app.add_sink(Proxy(settings, client, verifier, subject_limiter, metrics).handle, r"^/v1/")
    return app


def limit_setter(limiters: Iterable[RateLimiter]) -> Callable[..., None]:
    """``set_limits(rate=None, burst=None)``: a new rate (requests/s) and/or burst on every
    limiter, in place: buckets are kept, refills follow the new values from now on."""
    limiters = tuple(limiters)

    def set_limits(rate: float | None = None, burst: int | None = None) -> None:
        for limiter in limiters:
            if rate is not None:
                limiter.rate = float(rate)
            if burst is not None:
                limiter.burst = max(1, int(burst))

    return set_limits


def jwks_fetcher(client: UpstreamClient) -> Callable[[], Awaitable[Mapping[str, Any]]]:
    """Fetches the users service's JWKS through the gateway's own upstream client."""

    async def fetch_jwks() -> Mapping[str, Any]:
        answer = await client.request(
            "users",
            "GET",
            "/v1/auth/jwks",
            {"Accept": "application/json", REQUEST_ID_HEADER: request_id_var.get() or "jwks"},
        )
        if answer.status != 200:
            raise RuntimeError(f"JWKS answered {answer.status}")
        return json.loads(answer.body)

    return fetch_jwks


def cors_middleware(settings: Settings) -> falcon.CORSMiddleware:
    """CORS for the allowed origins of the settings (``*``: any)."""
    origins = settings.gateway_cors_origins
    return falcon.CORSMiddleware(
        allow_origins="*" if "*" in origins else origins,
        expose_headers=EXPOSED_HEADERS,
    )
