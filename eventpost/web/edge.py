"""The web edge every EventPost HTTP app shares, the WSGI services and the ASGI gateway alike.

Here is the logic, once: taking, binding and echoing the request ID; the one log line of each
request and its fields; problem+json for Falcon's HTTP errors and for
:class:`eventpost.errors.DomainError`; the unhandled-error 500 (logged with the path masked,
answered without internals); the answers of ``/health``, ``/ready`` and ``/metrics``.
:mod:`eventpost.web.wsgi` and :mod:`eventpost.web.asgi` only adapt it to their kind of app
(an ASGI app needs coroutine responders and error handlers).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import falcon
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from eventpost.errors import DomainError
from eventpost.ids import new_id
from eventpost.logs import log_line, loggable_path, request_id_var
from eventpost.problems import PROBLEM_JSON, problem_body, problem_from_http_error

log = logging.getLogger("eventpost.http")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

#: The paths every app answers itself (probes and scrapes).
OPS_PATHS = frozenset({"/health", "/ready", "/metrics"})


def new_request_id() -> str:
    """A fresh request ID."""
    return new_id()


def sane_request_id(value: str | None) -> str:
    """The client's request ID if it is sane, else a new one."""
    if value and _SANE_REQUEST_ID.match(value):
        return value
    return new_request_id()


def dumps_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as every response carries it (orjson: rendering a page of 100
    events took the json module five times as long); what orjson has no form for (an integer
    beyond 64 bits) goes through the json module."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def dumps(obj: Any) -> str:
    """Compact JSON used in every response (:func:`dumps_bytes` as text)."""
    return dumps_bytes(obj).decode()


#: ``resp.media`` as JSON through :func:`dumps_bytes` (requests are parsed as Falcon does).
JSON_MEDIA = falcon.media.JSONHandler(dumps=dumps_bytes)


class LabelledChildren:
    """The children of one labelled Prometheus metric, each looked up once per label values
    (``labels()`` checks and locks on every call; the hot path counts every request)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        """The child of ``values`` (made on first use)."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class RequestEdge:
    """Middleware, first in every app: takes the caller's X-Request-ID (or makes one), binds it
    to the logging context and echoes it on the response; times the request, lets
    :meth:`record` count it, and logs one line with its fields.

    It serves WSGI and ASGI apps alike (Falcon calls the ``*_async`` methods in an ASGI app).
    Subclasses own their metric series through :meth:`record` and may add log fields through
    :meth:`log_fields`.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = sane_request_id(req.get_header(REQUEST_ID_HEADER))
        req.context.request_id = rid
        req.context.started = time.perf_counter()
        req.context.rid_token = request_id_var.set(rid)
        resp.set_header(REQUEST_ID_HEADER, rid)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        ctx = req.context
        started = ctx.get("started")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        try:
            level = self.record(req, resp, elapsed)
            if level is not None:
                self._log_line(level, req, resp, elapsed)
        finally:
            token = ctx.get("rid_token")
            if token is not None:
                request_id_var.reset(token)

    async def process_request_async(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.process_request(req, resp)

    async def process_response_async(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        self.process_response(req, resp, resource, req_succeeded)

    def record(self, req: falcon.Request, resp: falcon.Response, elapsed: float) -> int | None:
        """Count and time the answered request; returns the level of its log line (None: no
        line)."""
        return logging.INFO

    def log_fields(self, req: falcon.Request) -> dict[str, Any]:
        """Fields the log line carries besides the common ones."""
        return {}

    def _log_line(
        self, level: int, req: falcon.Request, resp: falcon.Response, elapsed: float
    ) -> None:
        path = loggable_path(req.path)
        fields = {
            "request_id": req.context.get("request_id"),
            "method": req.method,
            "path": path,
            "status": resp.status_code,
            "duration_ms": round(elapsed * 1000, 2),
        }
        fields.update(self.log_fields(req))
        log_line(self.logger, level, f"{req.method} {path} {resp.status_code}", fields)


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Falcon's error serializer (WSGI and ASGI): every HTTP error as problem+json."""
    resp.content_type = PROBLEM_JSON
    resp.text = dumps(problem_from_http_error(exc))
    _challenge(resp, exc.status_code)


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
    _challenge(resp, exc.status)


def _challenge(resp: falcon.Response, status: int) -> None:
    # A 401 tells the client how to authenticate (RFC 9110), unless it already says.
    if status == 401 and not resp.get_header("WWW-Authenticate"):
        resp.set_header("WWW-Authenticate", "Bearer")


def render_unexpected(
    logger: logging.Logger, req: falcon.Request, resp: falcon.Response, detail: str
) -> None:
    """The answer to an exception nobody handled: logged with its traceback (the path masked,
    see :func:`eventpost.logs.loggable_path`), answered 500 without internals. Call it while
    the exception is being handled."""
    logger.exception("unhandled error in %s %s", req.method, loggable_path(req.path))
    resp.status = falcon.HTTP_500
    resp.content_type = PROBLEM_JSON
    resp.text = dumps(problem_body(500, detail=detail))


def render_health(resp: falcon.Response) -> None:
    """``GET /health``: 200 while the process lives."""
    resp.media = {"status": "ok"}


class NotReady(Exception):
    """What a readiness check raises to say "not ready" plainly (logged without a traceback;
    any other error is logged with its own)."""


def render_ready(
    resp: falcon.Response, checks: Collection[str], errors: Mapping[str, BaseException]
) -> None:
    """``GET /ready``: 200 naming the ``checks`` when none failed, else 503 naming those that
    did (in ``checks`` order). ``errors`` maps a failed check to its error, which is logged
    and never shown."""
    failing = [name for name in checks if name in errors]
    for name in failing:
        error = errors[name]
        if isinstance(error, NotReady):
            log.warning("readiness check %s failed: %s", name, error)
        else:
            log.warning("readiness check %s failed", name, exc_info=error)
    if failing:
        resp.status = falcon.HTTP_503
        resp.content_type = PROBLEM_JSON
        resp.text = dumps(
            problem_body(503, detail="Not ready: " + ", ".join(failing), failing=failing)
        )
    else:
        resp.media = {"status": "ready", "checks": sorted(checks)}


def render_metrics(resp: falcon.Response, registry: CollectorRegistry) -> None:
    """``GET /metrics``: the registry's series in Prometheus text format."""
    resp.content_type = CONTENT_TYPE_LATEST
    resp.data = generate_latest(registry)


class ProblemHandlers:
    """The error handlers of an app: a :class:`DomainError` becomes its problem, any other
    exception the 500 whose ``detail`` is ``failure_detail``. Falcon picks the most specific
    handler, so HTTP errors keep their own (:func:`serialize_error`). These are sync; the ASGI
    adapter wraps them in coroutines."""

    def __init__(self, logger: logging.Logger, failure_detail: str) -> None:
        self.logger = logger
        self.failure_detail = failure_detail

    def domain_error(
        self, req: falcon.Request, resp: falcon.Response, exc: DomainError, params: dict
    ) -> None:
        render_domain_error(resp, exc)

    def unexpected(
        self, req: falcon.Request, resp: falcon.Response, exc: Exception, params: dict
    ) -> None:
        render_unexpected(self.logger, req, resp, self.failure_detail)


@dataclass(frozen=True)
class EdgeAdapter:
    """What differs between a WSGI and an ASGI app at the edge: the classes of its ops
    resources, and how a sync error handler becomes one its kind of app accepts."""

    health: Callable[[], object]
    ready: Callable[[Mapping[str, Callable[[], Any]]], object]
    metrics: Callable[[CollectorRegistry], object]
    handler: Callable[[Callable[..., None]], Callable[..., Any]]


def install_edge(
    app: falcon.App,
    adapter: EdgeAdapter,
    *,
    logger: logging.Logger,
    failure_detail: str,
    ready_checks: Mapping[str, Callable[[], Any]],
    registry: CollectorRegistry,
) -> None:
    """Give ``app`` the edge: problem+json for every error (``failure_detail`` is the 500's,
    logged to ``logger``), ``/health``, ``/ready`` over ``ready_checks`` and ``/metrics`` of
    ``registry``. The request edge itself is middleware (:class:`RequestEdge`)."""
    handlers = ProblemHandlers(logger, failure_detail)
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = JSON_MEDIA
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, adapter.handler(handlers.unexpected))
    app.add_error_handler(DomainError, adapter.handler(handlers.domain_error))
    app.add_route("/health", adapter.health())
    app.add_route("/ready", adapter.ready(ready_checks))
    app.add_route("/metrics", adapter.metrics(registry))
