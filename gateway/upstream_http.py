"""The gateway's HTTP/1.1 client to its upstreams: pooled keep-alive connections on asyncio
protocols, answers parsed by httptools (the C parser uvicorn uses at the gateway's edge).

The gateway needs one thing from a client: send one request on a pooled connection and read
the whole answer into memory, within a connect and a total deadline. aiohttp's
``ClientSession`` (the gateway's client before) does that through machinery the gateway never
uses (tracing hooks, cookies, redirects, URL objects, timer contexts, stream readers per
request): measured in one run against a near-free upstream, a minimal ASGI proxy spent about
110 µs of CPU per request with it and about 10 µs here, which was a third of the gateway's
whole cost per forwarded GET (docs/notes/NOTES-load.md).

- Connections are kept per scheme, host and port, reused most recent first, and closed when
  idle for ``keepalive_timeout`` (below the upstreams' own keep-alive, so a connection the
  server is about to drop is not picked), when an answer says ``Connection: close``, after a
  ``HEAD``, and whenever an exchange fails or is cancelled.
- At most ``limit`` exchanges run at once; further requests wait for a slot.
- :class:`NotSent` means no byte of the request left (connect refused, unresolvable, or the
  connect deadline passed), so any method may be retried; :class:`ExchangeFailed` means the
  connection broke or the answer was malformed after the request may have reached the
  upstream; the total deadline raises :class:`TimeoutError`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

# Methods whose requests carry a body by definition: they always say how long it is.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class NotSent(Exception):
    """No byte of the request reached the upstream: safe to retry, whatever the method."""


class ExchangeFailed(Exception):
    """The connection broke, or the answer was not HTTP, after the request may have been
    sent."""


@dataclass(frozen=True)
class Answer:
    """An upstream's answer, read in full."""

    status: int
    headers: CIMultiDict[str]
    body: bytes


@dataclass(frozen=True)
class _Origin:
    """Where a base URL points: the pool key, and what the request head and socket need."""

    host: str
    port: int
    tls: bool
    host_header: str

    @classmethod
    def of(cls, base: str) -> _Origin:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) base URL: {base!r}")
        tls = parts.scheme == "https"
        default_port = 443 if tls else 80
        port = parts.port or default_port
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        return cls(host, port, tls, shown if port == default_port else f"{shown}:{port}")


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[tuple[Answer, bool]] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._status = 0
        self._headers_done = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._parser is not None and self._headers_done and self._until_close():
            self._finish(keep_alive=False)  # a body delimited by the end of the connection
        else:
            self._fail(ExchangeFailed("the upstream closed the connection before it answered"))

    def eof_received(self) -> bool:
        return False  # close our side too (connection_lost follows)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # the upstream spoke out of turn: this connection is not usable
            self.close()
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ExchangeFailed(f"the upstream's answer is not valid HTTP: {exc}"))
            self.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second answer to one request: never reuse this one
            self.closed = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()  # type: ignore[union-attr]
        self._headers_done = True
        if self._head_only and self._status >= 200:
            self._finish(keep_alive=False)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser is None:
            return
        if 100 <= self._status < 200:  # an interim answer: the real one follows
            self._headers.clear()
            self._headers_done = False
            return
        self._finish(keep_alive=self._parser.should_keep_alive())

    # the exchange

    def send(self, head: bytes, body: bytes | None, *, head_only: bool) -> asyncio.Future:
        """Write one request; the future gives ``(answer, reusable)``."""
        self._parser = httptools.HttpResponseParser(self)
        self._headers = []
        self._body = []
        self._headers_done = False
        self._head_only = head_only
        self._waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        if body:
            self.transport.writelines((head, body))
        else:
            self.transport.write(head)
        return self._waiter

    def expire(self) -> None:
        """The exchange's deadline passed: it fails with TimeoutError."""
        self._fail(TimeoutError("the upstream did not answer in time"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _until_close(self) -> bool:
        names = {name.lower() for name, _ in self._headers}
        return "content-length" not in names and "transfer-encoding" not in names

    def _finish(self, *, keep_alive: bool) -> None:
        waiter, self._waiter, self._parser = self._waiter, None, None
        if waiter is not None and not waiter.done():
            answer = Answer(self._status, CIMultiDict(self._headers), b"".join(self._body))
            waiter.set_result((answer, keep_alive and not self.closed))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter, self._parser = self._waiter, None, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class UpstreamHttp:
    """Pooled keep-alive HTTP/1.1 to any number of upstream origins (see the module)."""

    def __init__(
        self,
        *,
        limit: int = 512,
        keepalive_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._in_use = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._keepalive = keepalive_timeout
        self._clock = clock
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        base: str,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        *,
        connect_timeout: float,
        total_timeout: float,
    ) -> Answer:
        """Send ``method target`` (a percent-encoded path and query) with ``headers`` and
        ``body`` to the origin of ``base`` (``http://host:port``) and read the whole answer."""
        if self._closed:
            raise NotSent("the upstream client is closed")
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = _Origin.of(base)
        head = _request_head(origin, method, target, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total_timeout
        if self._in_use < self._limit and not self._waiting:
            self._in_use += 1
        else:
            async with asyncio.timeout_at(deadline):
                await self._wait_for_slot()
        try:
            conn = self._take_idle(origin)
            if conn is None:
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect(origin, connect_timeout)
            waiter = conn.send(head, body, head_only=method == "HEAD")
            # One timer per exchange (asyncio.timeout costs several times more per call).
            timer = loop.call_at(deadline, conn.expire)
            try:
                answer, reusable = await waiter
            except BaseException:
                conn.close()  # cancelled, timed out or broken: its state is unknown
                raise
            finally:
                timer.cancel()
        finally:
            self._give_slot()
        if reusable and not conn.closed and not self._closed:
            conn.idle_since = self._clock()
            self._idle.setdefault(origin, deque()).append(conn)
        else:
            conn.close()
        return answer

    # A slot counter of its own: asyncio.Semaphore.acquire scans its waiters on every call
    # (3.11), which showed in the profile of the hot path.

    async def _wait_for_slot(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter  # _give_slot hands its slot over: _in_use stays as it is
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_slot()  # handed a slot just as it was cancelled: pass it on
            else:
                self._waiting.remove(waiter)
            raise

    def _give_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_use -= 1

    async def close(self) -> None:
        """Close every idle connection; those in use close when their exchange ends."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_usable = self._clock() - self._keepalive
        while idle and (idle[0].closed or idle[0].idle_since < oldest_usable):
            idle.popleft().close()  # the least recently used ones expire first
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, origin: _Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if origin.tls:
            tls = self._tls = self._tls or ssl.create_default_context()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    _Connection, origin.host, origin.port, ssl=tls
                )
        except TimeoutError:
            raise NotSent(f"no connection to {origin.host}:{origin.port} in {timeout} s") from None
        except OSError as exc:  # refused, unreachable, unresolvable, TLS handshake failed
            raise NotSent(f"cannot connect to {origin.host}:{origin.port}: {exc}") from None
        return conn


def _request_head(
    origin: _Origin, method: str, target: str, headers: Mapping[str, str], body: bytes | None
) -> bytes:
    """The request line and headers; refuses what would split the head (CR or LF)."""
    if not target.startswith("/") or any(c in target for c in " \r\n"):
        raise ValueError(f"not a request target: {target!r}")
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} would split the request head")
        lines.append(f"{name}: {value}\r\n")
    if body:
        lines.append(f"Content-Length: {len(body)}\r\n")
    elif method in _BODY_METHODS:
        lines.append("Content-Length: 0\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")
