"""The API gateway: one Falcon ASGI app in front of the users, events and notifications services.

``create_app`` is the only wiring. Per request, in order: the request edge (request ID, metrics,
log line; :mod:`gateway.middleware`), CORS, the per-address rate limits (login and sign-up,
anonymous requests), then the proxy (:mod:`gateway.proxy`: route lookup, preflight, body limit,
token check, per-subject rate limit, forwarding). The limits are one
:class:`gateway.ratelimit.EdgePolicy` (in memory, or in Redis with ``REDIS_URL``). Errors
answer problem+json and the gateway answers ``/health``, ``/ready`` (every upstream ready) and
``/metrics`` itself, through the edge the services share (:mod:`eventpost.web`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
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
from gateway.ratelimit import Buckets, EdgePolicy, RateLimiter
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
    # The gateway serves no WebSocket: without this, uvicorn takes up whatever WebSocket
    # library happens to be installed (wsproto comes with the load-test tools) and answers an
    # Upgrade with 403 instead of the plain HTTP answer.
    "ws": "none",
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
    rate_policy: EdgePolicy | None = None,
) -> falcon.asgi.App:
    """The gateway app. ``discovery`` finds the upstreams (default: ``discovery_for(settings)``),
    ``clock`` (monotonic seconds) drives rate limits, circuit breakers and the JWKS cache,
    ``policies`` overrides timeouts/retries/breaker per upstream, ``registry`` holds the
    metrics, ``address_limiter`` replaces the anonymous class's per-address buckets,
    ``rate_policy`` the whole rate-limit policy made from the settings (keep a reference to
    change its limits at run time: :meth:`EdgePolicy.set_general`).
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
    if rate_policy is None:
        rate_policy = EdgePolicy.from_settings(
            settings, clock, rate_buckets(settings, metrics, clock)
        )
    if address_limiter is not None:
        rate_policy.limiters["anonymous"] = address_limiter
    middleware: list[Any] = [
        LifespanMiddleware(client, rate_policy),
        GatewayEdge(metrics),
        cors_middleware(settings),
        RateLimitMiddleware(rate_policy, metrics),
    ]
    if settings.consul_http_addr:
        middleware.insert(1, ConsulLifespan(settings, rate_policy.set_general, env=env))
    app = falcon.asgi.App(middleware=middleware)
    install_edge(
        app,
        ASGI_EDGE,
        logger=log,
        failure_detail="The gateway failed; the error was logged.",
        ready_checks=client.ready_checks(),
        registry=registry,
    )
    app.add_sink(Proxy(settings, client, verifier, rate_policy, metrics).handle, r"^/v1/")
    return app


def rate_buckets(
    settings: Settings, metrics: GatewayMetrics, clock: Callable[[], float]
) -> Buckets | None:
    """Redis buckets shared by every gateway with ``REDIS_URL``, else None (in memory)."""
    if not settings.redis_url:
        return None
    from gateway.redis_buckets import RedisBuckets  # redis is loaded only when used

    return RedisBuckets(
        settings.redis_url,
        prefix=settings.gateway_redis_prefix,
        clock=clock,
        on_state=metrics.observe_redis,
        on_fail_open=metrics.fail_open.inc,
    )


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
