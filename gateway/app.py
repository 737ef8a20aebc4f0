"""The API gateway: one Falcon ASGI app in front of the users, events and notifications services.

``create_app`` is the only wiring. Per request, in order: request ID, per-address rate limit,
route lookup (404), CORS preflight, body size limit (413), token check at the edge (401),
per-subject rate limit, then the request is forwarded through the pooled upstream client and the
upstream's answer relayed (or 502/503/504 problem+json). The gateway answers ``/health``,
``/ready`` and ``/metrics`` itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import falcon
import falcon.asgi
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from eventpost.auth import InvalidToken, keys_unavailable, unauthorized
from eventpost.discovery import SERVICES, Discovery, discovery_for
from eventpost.logs import loggable_path, request_id_var
from eventpost.problems import PROBLEM_JSON, problem_body, problem_from_http_error
from eventpost.settings import Settings
from eventpost.web import REQUEST_ID_HEADER, dumps, sane_request_id
from gateway.auth import EdgeVerifier, KeysUnavailable
from gateway.ratelimit import RateLimiter
from gateway.routes import requires_user, resolve
from gateway.upstreams import (
    BreakerState,
    UpstreamClient,
    UpstreamError,
    UpstreamPolicy,
)

log = logging.getLogger("gateway.http")

# Request headers passed to the services; everything else (hop-by-hop headers, cookies, and
# any identity header a client may invent, X-User-*, X-Auth-*...) stays at the gateway.
FORWARD_REQUEST_HEADERS = (
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
    "User-Agent",
)
# Response headers relayed to the client (hop-by-hop ones, Server, Date, Content-Length and the
# upstream's X-Request-ID are the gateway's own business).
RELAY_RESPONSE_HEADERS = (
    "Allow",
    "Cache-Control",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Type",
    "ETag",
    "Expires",
    "Last-Modified",
    "Link",
    "Location",
    "Retry-After",
    "Vary",
    "WWW-Authenticate",
)
EXPOSED_HEADERS = ("X-Request-ID", "Location", "ETag", "Retry-After", "WWW-Authenticate")
PREFLIGHT_ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})


class GatewayMetrics:
    """The gateway's Prometheus series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests answered by the gateway",
            ["route", "method", "status"],
            registry=registry,
        )
        buckets = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        self.upstream_latency = Histogram(
            "gateway_upstream_duration_seconds",
            "Time an upstream took to answer (successful exchanges)",
            ["upstream"],
            registry=registry,
            buckets=buckets,
        )
        self.request_latency = Histogram(
            "gateway_request_duration_seconds",
            "Time the gateway took to answer a request, upstream included",
            ["route"],
            registry=registry,
            buckets=buckets,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time the gateway itself added to a forwarded request (total minus upstream)",
            registry=registry,
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
        )
        self.circuit_open = Gauge(
            "gateway_circuit_open",
            "1 while the circuit breaker of an upstream is open or half-open",
            ["upstream"],
            registry=registry,
        )


class EdgeMiddleware:
    """Request ID, timing, metrics and one JSON log line per request."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        rid = sane_request_id(req.get_header(REQUEST_ID_HEADER))
        req.context.request_id = rid
        req.context.started = time.perf_counter()
        req.context.rid_token = request_id_var.set(rid)
        req.context.route = None
        req.context.upstream = None
        req.context.upstream_seconds = None
        resp.set_header(REQUEST_ID_HEADER, rid)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        ctx = req.context
        elapsed = time.perf_counter() - ctx.get("started", time.perf_counter())
        route = ctx.get("route") or req.uri_template or "unmatched"
        status = resp.status_code
        self.metrics.requests.labels(route, req.method, str(status)).inc()
        self.metrics.request_latency.labels(route).observe(elapsed)
        upstream_seconds = ctx.get("upstream_seconds")
        if upstream_seconds is not None:
            self.metrics.overhead.observe(max(0.0, elapsed - upstream_seconds))
        log.log(
            logging.DEBUG if req.path in OPS_PATHS else logging.INFO,
            "%s %s %s",
            req.method,
            loggable_path(req.path),
            status,
            extra={
                "request_id": ctx.get("request_id"),
                "method": req.method,
                "path": loggable_path(req.path),
                "status": status,
                "upstream": ctx.get("upstream"),
                "duration_ms": round(elapsed * 1000, 2),
                "upstream_ms": (
                    round(upstream_seconds * 1000, 2) if upstream_seconds is not None else None
                ),
            },
        )
        token = ctx.get("rid_token")
        if token is not None:
            request_id_var.reset(token)


class RateLimitMiddleware:
    """Per-client-address token buckets (the gateway's own endpoints are exempt)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not self.limiter.enabled or req.path in OPS_PATHS:
            return
        decision = self.limiter.take("addr:" + peer_address(req))
        if not decision.allowed:
            raise falcon.HTTPTooManyRequests(
                title="Too Many Requests",
                description="Too many requests from this address; slow down.",
                retry_after=decision.retry_after,
            )


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


def _raw_path(req: falcon.asgi.Request) -> str:
    raw = req.scope.get("raw_path")
    if raw:
        return raw.decode("latin-1")
    return quote(req.path, safe="/:@!$&'()*+,;=-._~")


class Proxy:
    """The sink under ``/v1/``: everything that goes to a service."""

    def __init__(
        self,
        settings: Settings,
        client: UpstreamClient,
        verifier: EdgeVerifier,
        limiter: RateLimiter,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.client = client
        self.verifier = verifier
        self.limiter = limiter
        self.metrics = metrics

    async def handle(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **_: Any) -> None:
        """Forward one request to the upstream its path belongs to."""
        route = resolve(req.path)
        if route is None:
            raise falcon.HTTPNotFound(description="No resource lives at this path.")
        req.context.route = route.name
        req.context.upstream = route.upstream

        if req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method"):
            # CORS preflight: answered here (CORSMiddleware adds its headers from Allow).
            resp.status = falcon.HTTP_204
            resp.set_header("Allow", PREFLIGHT_ALLOW)
            return

        limit = self.settings.max_body_bytes
        length = req.content_length
        if length is not None and length > limit:
            raise _too_large(limit)

        await self._authenticate(req)
        body = await _read_body(req, limit)

        headers = self._forward_headers(req)
        target = _raw_path(req)
        if req.query_string:
            target += "?" + req.query_string
        try:
            answer = await self.client.request(route.upstream, req.method, target, headers, body)
        except UpstreamError as exc:
            self._update_breaker_gauge(route.upstream)
            raise _upstream_problem(exc) from None
        self._update_breaker_gauge(route.upstream)
        req.context.upstream_seconds = answer.seconds

        resp.status = answer.status
        for name in RELAY_RESPONSE_HEADERS:
            values = answer.headers.getall(name, ())
            if len(values) == 1:
                resp.set_header(name, values[0])
            elif values:
                for value in values:
                    resp.append_header(name, value)
        if answer.body:
            resp.data = answer.body

    async def _authenticate(self, req: falcon.asgi.Request) -> None:
        header = req.get_header("Authorization")
        if header is None:
            if requires_user(req.method, req.path):
                raise unauthorized("A bearer access token is required.", error=None)
            return
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized("Only bearer access tokens are accepted.", "invalid_request")
        try:
            claims = await self.verifier.verify(token)
        except KeysUnavailable:
            raise keys_unavailable() from None
        except InvalidToken:
            raise unauthorized() from None
        req.context.subject = claims.sub
        decision = self.limiter.take("sub:" + claims.sub)
        if not decision.allowed:
            raise falcon.HTTPTooManyRequests(
                title="Too Many Requests",
                description="Too many requests for this account; slow down.",
                retry_after=decision.retry_after,
            )

    def _forward_headers(self, req: falcon.asgi.Request) -> dict[str, str]:
        headers = {}
        for name in FORWARD_REQUEST_HEADERS:
            value = req.get_header(name)
            if value is not None:
                headers[name] = value
        headers[REQUEST_ID_HEADER] = req.context.request_id
        headers["X-Forwarded-For"] = peer_address(req)
        headers["X-Forwarded-Proto"] = req.scheme
        host = req.get_header("Host")
        if host:
            headers["X-Forwarded-Host"] = host
        return headers

    def _update_breaker_gauge(self, name: str) -> None:
        state = self.client.upstreams[name].breaker.state
        self.metrics.circuit_open.labels(name).set(0 if state is BreakerState.CLOSED else 1)


def _too_large(limit: int) -> falcon.HTTPError:
    return falcon.HTTPContentTooLarge(
        title="Content Too Large",
        description=f"The request body is larger than {limit} bytes.",
    )


async def _read_body(req: falcon.asgi.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in req.stream:
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _upstream_problem(exc: UpstreamError) -> falcon.HTTPError:
    if exc.status == 504:
        return falcon.HTTPGatewayTimeout(title="Gateway Timeout", description=exc.detail)
    if exc.status == 503:
        return falcon.HTTPServiceUnavailable(
            title="Service Unavailable", description=exc.detail, retry_after=exc.retry_after
        )
    return falcon.HTTPBadGateway(title="Bad Gateway", description=exc.detail)


class HealthResource:
    """``GET /health``: 200 while the process lives."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """``GET /ready``: 200 when every upstream answers its own ``/ready`` with 200, else 503
    naming the ones that do not."""

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        names = sorted(self.client.upstreams)
        results = await asyncio.gather(*(self.client.ready(name) for name in names))
        failing = [name for name, ok in zip(names, results, strict=True) if not ok]
        if failing:
            resp.status = falcon.HTTP_503
            resp.content_type = PROBLEM_JSON
            resp.text = dumps(
                problem_body(503, detail="Not ready: " + ", ".join(failing), failing=failing)
            )
        else:
            resp.media = {"status": "ready", "checks": names}


class MetricsResource:
    """``GET /metrics``: Prometheus text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self.registry)


def _serialize_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: falcon.HTTPError):
    resp.content_type = PROBLEM_JSON
    resp.text = dumps(problem_from_http_error(exc))
    if exc.status_code == 401 and not resp.get_header("WWW-Authenticate"):
        resp.set_header("WWW-Authenticate", "Bearer")


async def _handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, exc: Exception, params: dict
) -> None:
    log.exception("unhandled error in %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.content_type = PROBLEM_JSON
    resp.text = dumps(problem_body(500, detail="The gateway failed; the error was logged."))


@dataclass(frozen=True)
class Gateway:
    """The gateway app and the parts tests and tools look into."""

    app: falcon.asgi.App
    client: UpstreamClient
    verifier: EdgeVerifier
    limiter: RateLimiter  # per client address
    subject_limiter: RateLimiter  # per authenticated subject
    metrics: GatewayMetrics


def create_app(
    settings: Settings,
    *,
    discovery: Discovery | None = None,
    clock: Callable[[], float] = time.monotonic,
    policies: Mapping[str, UpstreamPolicy] | None = None,
    registry: CollectorRegistry | None = None,
    jwks_min_refetch: float = 5.0,
) -> falcon.asgi.App:
    """The gateway app. ``discovery`` finds the upstreams (default: ``discovery_for(settings)``),
    ``clock`` (monotonic seconds) drives rate limits, circuit breakers and the JWKS cache,
    ``policies`` overrides timeouts/retries/breaker per upstream. Nothing connects until the
    ASGI lifespan starts."""
    return build_gateway(
        settings,
        discovery=discovery,
        clock=clock,
        policies=policies,
        registry=registry,
        jwks_min_refetch=jwks_min_refetch,
    ).app


def build_gateway(
    settings: Settings,
    *,
    discovery: Discovery | None = None,
    clock: Callable[[], float] = time.monotonic,
    policies: Mapping[str, UpstreamPolicy] | None = None,
    registry: CollectorRegistry | None = None,
    jwks_min_refetch: float = 5.0,
) -> Gateway:
    """Like :func:`create_app`, returning the app with its parts."""
    discovery = discovery or discovery_for(settings)
    registry = registry or CollectorRegistry()
    metrics = GatewayMetrics(registry)
    default_policy = UpstreamPolicy(
        connect_timeout=settings.gateway_connect_timeout,
        total_timeout=settings.gateway_upstream_timeout,
    )
    client = UpstreamClient(
        discovery,
        SERVICES,
        clock=clock,
        default_policy=default_policy,
        policies=policies,
        observe=lambda name, seconds: metrics.upstream_latency.labels(name).observe(seconds),
    )

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

    verifier = EdgeVerifier(fetch_jwks, clock=clock, min_refetch_seconds=jwks_min_refetch)
    limiter = RateLimiter(settings.gateway_rate_limit, settings.gateway_rate_burst, clock)
    subject_limiter = RateLimiter(settings.gateway_rate_limit, settings.gateway_rate_burst, clock)
    origins = settings.gateway_cors_origins
    cors = falcon.CORSMiddleware(
        allow_origins="*" if "*" in origins else origins,
        expose_headers=EXPOSED_HEADERS,
    )

    app = falcon.asgi.App(
        middleware=[
            LifespanMiddleware(client),
            EdgeMiddleware(metrics),
            cors,
            RateLimitMiddleware(limiter),
        ],
    )
    app.set_error_serializer(_serialize_error)
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_route("/health", HealthResource())
    app.add_route("/ready", ReadyResource(client))
    app.add_route("/metrics", MetricsResource(registry))
    app.add_sink(Proxy(settings, client, verifier, subject_limiter, metrics).handle, r"^/v1/")
    return Gateway(app, client, verifier, limiter, subject_limiter, metrics)
