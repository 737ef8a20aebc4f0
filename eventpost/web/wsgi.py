"""The Falcon (WSGI) app factory every service is built on: the shared edge
(:mod:`eventpost.web.edge`) with the services' ``http_*`` series and sync ops resources."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import falcon
from prometheus_client import CollectorRegistry, Counter, Histogram

from eventpost.settings import Settings
from eventpost.web.edge import (
    OPS_PATHS,
    EdgeAdapter,
    LabelledChildren,
    RequestEdge,
    install_edge,
    render_health,
    render_metrics,
    render_ready,
)

log = logging.getLogger("eventpost.http")

#: A readiness check: passes unless it raises.
ReadyCheck = Callable[[], object]


class ServiceEdge(RequestEdge):
    """The request edge of a service: counts requests and measures their latency by route
    template (``http_*`` series); probes and scrapes get no log line."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(log)
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
        self._requests = LabelledChildren(self.requests)
        self._latency = LabelledChildren(self.latency)

    def record(self, req: falcon.Request, resp: falcon.Response, elapsed: float) -> int | None:
        route = req.uri_template or "unmatched"
        self._requests(req.method, route, str(resp.status_code)).inc()
        self._latency(req.method, route).observe(elapsed)
        return None if route in OPS_PATHS else logging.INFO


class HealthResource:
    """``GET /health``: 200 while the process lives."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        render_health(resp)


class ReadyResource:
    """``GET /ready``: 200 when every check passes, 503 naming the ones that fail."""

    def __init__(self, checks: Mapping[str, ReadyCheck]) -> None:
        self.checks = checks

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        errors: dict[str, BaseException] = {}
        for name, check in self.checks.items():
            try:
                check()
            except Exception as exc:  # any failure means "not ready"
                errors[name] = exc
        render_ready(resp, list(self.checks), errors)


class MetricsResource:
    """``GET /metrics``: Prometheus text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        render_metrics(resp, self.registry)


#: The edge's parts for a WSGI app: sync resources, error handlers as they are.
WSGI_EDGE = EdgeAdapter(
    health=HealthResource, ready=ReadyResource, metrics=MetricsResource, handler=lambda h: h
)


def create_service_app(
    settings: Settings,
    ready_checks: Mapping[str, ReadyCheck] | None = None,
    middleware: list[object] | None = None,
    registry: CollectorRegistry | None = None,
) -> falcon.App:
    """A Falcon WSGI app with EventPost's common edges; the service adds its routes."""
    registry = registry or CollectorRegistry()
    app = falcon.App(middleware=[ServiceEdge(registry), *(middleware or [])])
    app.req_options.strip_url_path_trailing_slash = True
    app.resp_options.secure_cookies_by_default = True
    install_edge(
        app,
        WSGI_EDGE,
        logger=log,
        failure_detail="The server failed to answer; the error was logged.",
        ready_checks=ready_checks or {},
        registry=registry,
    )
    return app
