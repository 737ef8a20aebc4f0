"""The Falcon (WSGI) app factory every service is built on.

It gives each service the same edges: request IDs, JSON logs of every request, problem+json
errors for every failure (404, 405, unhandled exceptions without internals), ``/health``,
``/ready`` and ``/metrics``.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import falcon
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from eventpost.errors import DomainError
from eventpost.logs import loggable_path, request_id_var
from eventpost.problems import PROBLEM_JSON, problem_body, problem_from_http_error
from eventpost.settings import Settings

log = logging.getLogger("eventpost.http")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

ReadyCheck = Callable[[], object]


def new_request_id() -> str:
    """A fresh request ID."""
    return uuid.uuid4().hex


def sane_request_id(value: str | None) -> str:
    """The client's request ID if it is sane, else a new one."""
    if value and _SANE_REQUEST_ID.match(value):
        return value
    return new_request_id()


def dumps(obj: Any) -> str:
    """Compact JSON used in every response."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class RequestIdMiddleware:
    """Takes the caller's X-Request-ID (or makes one), binds it to the logging context and
    echoes it on the response."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = sane_request_id(req.get_header(REQUEST_ID_HEADER))
        req.context.request_id = rid
        req.context.started = time.perf_counter()
        req.context.rid_token = request_id_var.set(rid)
        resp.set_header(REQUEST_ID_HEADER, rid)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, ok: bool
    ) -> None:
        token = getattr(req.context, "rid_token", None)
        if token is not None:
            request_id_var.reset(token)


class MetricsMiddleware:
    """Counts requests and measures their latency, by route template; logs one line each."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.service = service

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, ok: bool
    ) -> None:
        started = getattr(req.context, "started", None)
        elapsed = time.perf_counter() - started if started else 0.0
        route = req.uri_template or "unmatched"
        status = str(resp.status_code)
        self.requests.labels(req.method, route, status).inc()
        self.latency.labels(req.method, route).observe(elapsed)
        if route not in ("/health", "/ready", "/metrics"):
            log.info(
                "%s %s %s",
                req.method,
                loggable_path(req.path),
                status,
                extra={
                    "request_id": getattr(req.context, "request_id", None),
                    "method": req.method,
                    "path": loggable_path(req.path),
                    "status": resp.status_code,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )


def _serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError):
    resp.content_type = PROBLEM_JSON
    resp.text = dumps(problem_from_http_error(exc))
    if exc.status_code == 401 and not resp.get_header("WWW-Authenticate"):
        resp.set_header("WWW-Authenticate", "Bearer")


def render_domain_error(resp: falcon.Response, exc: DomainError) -> None:
    """Write a :class:`DomainError` into ``resp`` as problem+json (the one place domain errors
    become HTTP answers)."""
    resp.status = exc.status
    resp.content_type = PROBLEM_JSON
    resp.text = dumps(
        problem_body(exc.status, title=exc.title, detail=exc.detail, errors=exc.errors)
    )
    for name, value in exc.headers.items():
        resp.set_header(name, value)
    if exc.status == 401 and not resp.get_header("WWW-Authenticate"):
        resp.set_header("WWW-Authenticate", "Bearer")


def _handle_domain_error(
    req: falcon.Request, resp: falcon.Response, exc: DomainError, params: dict
) -> None:
    render_domain_error(resp, exc)


def _handle_unexpected(
    req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict
) -> None:
    log.exception("unhandled error in %s %s", req.method, loggable_path(req.path))
    resp.status = falcon.HTTP_500
    resp.content_type = PROBLEM_JSON
    resp.text = dumps(
        problem_body(500, detail="The server failed to answer; the error was logged.")
    )


class HealthResource:
    """``GET /health``: 200 while the process lives."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class ReadyResource:
    """``GET /ready``: 200 when every check passes, 503 naming the ones that fail."""

    def __init__(self, checks: Mapping[str, ReadyCheck]) -> None:
        self.checks = checks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        failing = []
        for name, check in self.checks.items():
            try:
                check()
            except Exception:  # any failure means "not ready"
                log.warning("readiness check %s failed", name, exc_info=True)
                failing.append(name)
        if failing:
            resp.status = falcon.HTTP_503
            resp.content_type = PROBLEM_JSON
            resp.text = dumps(
                problem_body(503, detail="Not ready: " + ", ".join(failing), failing=failing)
            )
        else:
            resp.media = {"status": "ready", "checks": sorted(self.checks)}


class MetricsResource:
    """``GET /metrics``: Prometheus text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self.registry)


def create_service_app(
    settings: Settings,
    ready_checks: Mapping[str, ReadyCheck] | None = None,
    middleware: list[object] | None = None,
    registry: CollectorRegistry | None = None,
) -> falcon.App:
    """A Falcon WSGI app with EventPost's common edges; the service adds its routes."""
    registry = registry or CollectorRegistry()
    app = falcon.App(
        middleware=[
            RequestIdMiddleware(),
            MetricsMiddleware(registry, settings.service),
            *(middleware or []),
        ],
    )
    app.req_options.strip_url_path_trailing_slash = True
    app.resp_options.secure_cookies_by_default = True
    app.set_error_serializer(_serialize_error)
    # Falcon picks the most specific handler, so HTTPError keeps its own (serialized above).
    app.add_error_handler(Exception, _handle_unexpected)
    app.add_error_handler(DomainError, _handle_domain_error)
    app.add_route("/health", HealthResource())
    app.add_route("/ready", ReadyResource(ready_checks or {}))
    app.add_route("/metrics", MetricsResource(registry))
    return app
