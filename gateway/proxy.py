"""The sink under ``/v1/``: everything the gateway forwards to a service.

Per request, in order: route lookup (404), CORS preflight, body size limit (413), token check
at the edge (401, or 503 when no key can check it), per-subject rate limit (429: the ``user``
or ``admin`` class; a token that does not verify is charged to the address); then the
request goes through the pooled upstream client and the upstream's answer is relayed (or a
502/503/504 problem+json answers for it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import falcon
import falcon.asgi

from eventpost.auth import InvalidToken, keys_unavailable, unauthorized
from eventpost.settings import Settings
from eventpost.web import REQUEST_ID_HEADER
from gateway.auth import EdgeVerifier, KeysUnavailable
from gateway.metrics import GatewayMetrics
from gateway.middleware import charge, peer_address
from gateway.ratelimit import EdgePolicy
from gateway.routes import requires_user, resolve
from gateway.upstreams import UpstreamClient, UpstreamError

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
PREFLIGHT_ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# The same, as the hot path looks them up: ASGI header names are lower-case bytes.
_FORWARD_BY_RAW_NAME = {name.lower().encode("latin-1"): name for name in FORWARD_REQUEST_HEADERS}
_RELAYED = frozenset(name.lower() for name in RELAY_RESPONSE_HEADERS)


def _raw_path(req: falcon.asgi.Request) -> str:
    # The path as the client sent it (percent-encoding kept), for the upstream.
    raw = req.scope.get("raw_path")
    if raw:
        return raw.decode("latin-1")
    return quote(req.path, safe="/:@!$&'()*+,;=-._~")


class Proxy:
    """The sink under ``/v1/``: everything that goes to a service (:meth:`handle`)."""

    def __init__(
        self,
        settings: Settings,
        client: UpstreamClient,
        verifier: EdgeVerifier,
        policy: EdgePolicy,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.client = client
        self.verifier = verifier
        self.policy = policy
        self.metrics = metrics

    async def _charge_address(self, req: falcon.asgi.Request) -> None:
        # A request the middleware left to the proxy (it had a token) that gets no subject.
        if not req.context.get("rate_charged"):
            await charge(self.policy, self.metrics, req, "anonymous", "addr:" + peer_address(req))

    async def handle(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, **_: Any) -> None:
        """Forward one request to the upstream its path belongs to."""
        route = resolve(req.path)
        if route is None:
            await self._charge_address(req)
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
        # HTTP/1.1: a request has a body only when it says how it is framed (RFC 9112 6.3);
        # without either header there is nothing to wait for.
        if length is None and req.get_header("Transfer-Encoding") is None:
            body = b""
        else:
            body = await _read_body(req, limit)

        await self._forward(req, resp, route.upstream, body)

    async def _forward(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, upstream: str, body: bytes
    ) -> None:
        """Send the request to ``upstream`` and relay its answer."""
        target = _raw_path(req)
        if req.query_string:
            target += "?" + req.query_string
        headers = self._forward_headers(req)
        breaker = self.client.upstreams[upstream].breaker
        try:
            answer = await self.client.request(upstream, req.method, target, headers, body)
        except UpstreamError as exc:
            raise _upstream_problem(exc) from None
        finally:
            self.metrics.observe_breaker(upstream, breaker.state)
        req.context.upstream_seconds = answer.seconds

        resp.status = answer.status
        relayed: set[str] = set()
        for name, value in answer.headers.items():  # one pass over what the upstream sent
            key = name.lower()
            if key not in _RELAYED:
                continue
            if key in relayed:
                resp.append_header(name, value)
            else:
                resp.set_header(name, value)
                relayed.add(key)
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
            await self._charge_address(req)
            raise unauthorized("Only bearer access tokens are accepted.", "invalid_request")
        try:
            claims = await self.verifier.verify(token)
        except KeysUnavailable:
            await self._charge_address(req)
            raise keys_unavailable() from None
        except InvalidToken:
            await self._charge_address(req)
            raise unauthorized() from None
        req.context.subject = claims.sub
        if not req.context.get("rate_charged"):
            limit_class = "admin" if claims.is_admin else "user"
            await charge(self.policy, self.metrics, req, limit_class, "sub:" + claims.sub)

    def _forward_headers(self, req: falcon.asgi.Request) -> dict[str, str]:
        # One pass over the raw ASGI headers (a get_header per name costs a lookup each);
        # repeated headers are joined with "," as Falcon's get_header joins them.
        headers: dict[str, str] = {}
        host = None
        for raw_name, raw_value in req.scope["headers"]:
            name = _FORWARD_BY_RAW_NAME.get(raw_name)
            if name is not None:
                value = raw_value.decode("latin-1")
                headers[name] = f"{headers[name]},{value}" if name in headers else value
            elif raw_name == b"host":
                host = raw_value.decode("latin-1")
        headers[REQUEST_ID_HEADER] = req.context.request_id
        headers["X-Forwarded-For"] = peer_address(req)
        headers["X-Forwarded-Proto"] = req.scheme
        if host:
            headers["X-Forwarded-Host"] = host
        return headers


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
