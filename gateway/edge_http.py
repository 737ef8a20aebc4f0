"""The gateway's HTTP/1.1 edge: uvicorn's httptools protocol with the limits it lacks.

uvicorn + httptools put no bound on a request's header block and no deadline on reading the
headers or the body: a client may send headers forever, or a byte a second, and hold its
connection (and the buffer) as long as it likes. :func:`edge_protocol` makes a subclass of
uvicorn's ``HttpToolsProtocol`` (given to ``uvicorn.Config(http=...)``) that refuses, with a
problem+json answer and ``Connection: close``:

- a request target longer than ``max_url_bytes``: 414;
- a header block larger than ``max_header_bytes``, with more than ``max_headers`` fields or with
  one field larger than ``max_field_bytes``: 431;
- a header block not complete within ``header_timeout`` seconds of the connection opening (or,
  on a kept-alive connection, of the next request's first byte): 408, then close;
- a body not complete within ``body_timeout`` seconds of the end of its headers (a
  ``Content-Length`` that promises more than is sent, a chunked body that never ends, a client
  that dribbles): 408, then close (only closed when an answer has already started, e.g. the
  413 of a body announced too large);
- anything the parser refuses (an invalid method, a malformed ``Content-Length``, both
  ``Content-Length`` and ``Transfer-Encoding``, a bad chunk): 400 instead of uvicorn's
  text/plain one.

Every connection is a few objects on the one event loop, so slow clients cost no thread and
the gateway keeps answering the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from eventpost.ids import new_id
from eventpost.problems import PROBLEM_JSON, problem_body
from eventpost.settings import Settings

log = logging.getLogger("gateway.edge")

# Request line overhead beyond the target: method, spaces, "HTTP/1.1", CRLFs.
_LINE_SLACK = 64


@dataclass(frozen=True)
class EdgeLimits:
    """The bounds of :func:`edge_protocol` (sizes in bytes, deadlines in seconds)."""

    max_url_bytes: int = 4000
    max_header_bytes: int = 16 * 1024
    max_field_bytes: int = 8000
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        """The limits the gateway's settings give."""
        return cls(
            max_url_bytes=settings.gateway_max_url_bytes,
            max_header_bytes=settings.gateway_max_header_bytes,
            max_field_bytes=settings.gateway_max_header_field_bytes,
            max_headers=settings.gateway_max_headers,
            header_timeout=settings.gateway_header_timeout,
            body_timeout=settings.gateway_body_timeout,
        )


class CoalescingTransport:
    """A transport's writes of one event loop turn, sent as one.

    uvicorn writes an answer's status line and headers, then its body: two ``send`` calls,
    two TCP segments, for every answer (on loopback each ``send`` also runs the receiver's
    side of TCP). Falcon sends both in one turn of the loop, so here they leave together,
    at the end of that turn (or at once when the connection is closed). Everything else is
    the wrapped transport's."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the end of this loop turn."""
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._send)
        self._pending.append(data)

    def _send(self) -> None:
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        if not self._transport.is_closing():  # a peer gone: nobody to send to
            self._transport.write(data)

    def close(self) -> None:
        """Send what is queued, then close."""
        self._send()
        self._transport.close()

    def abort(self) -> None:
        """Drop what is queued and abort."""
        self._pending.clear()
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the refusal is on the protocol."""


class EdgeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`EdgeLimits` (the class attribute ``limits``;
    :func:`edge_protocol` makes a subclass with the limits set)."""

    limits = EdgeLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._in_body = False
        self._head_bytes = 0  # counted from the parser callbacks: exact
        self._raw_head_bytes = 0  # counted from the bytes received while in a head: a bound
        self._header_count = 0
        self._url_bytes = 0
        self._refusal: tuple[int, str] | None = None

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline: a connection that sends nothing is closed too. The
        protocol writes through a :class:`CoalescingTransport`."""
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self._arm(self.limits.header_timeout, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count the bytes of an unfinished head before the parser buffers them."""
        if self._refusal is not None:
            return
        if self._in_head:
            self._raw_head_bytes += len(data)
            bound = self.limits.max_header_bytes + self.limits.max_url_bytes + _LINE_SLACK
            if self._raw_head_bytes > bound:
                self._refuse(431, "The request's header block is too large.")
                return
        super().data_received(data)

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """A request starts: its head is counted and (on a kept-alive connection) timed."""
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._raw_head_bytes = self._header_count = self._url_bytes = 0
        if self._timer is None:
            self._arm(self.limits.header_timeout, "headers")

    def on_url(self, url: bytes) -> None:
        """Refuse a target longer than the limit as soon as it is (414)."""
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_url_bytes:
            self._stop(414, f"The request target is longer than {self.limits.max_url_bytes} bytes.")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Refuse a header block over the size or count limits (431)."""
        field = len(name) + len(value) + 4
        self._head_bytes += field
        self._header_count += 1
        if field > self.limits.max_field_bytes:
            self._stop(431, f"A header field is larger than {self.limits.max_field_bytes} bytes.")
        if self._head_bytes > self.limits.max_header_bytes:
            self._stop(
                431, f"The header block is larger than {self.limits.max_header_bytes} bytes."
            )
        if self._header_count > self.limits.max_headers:
            self._stop(431, f"The request has more than {self.limits.max_headers} header fields.")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The head is in: the body deadline replaces the header deadline."""
        self._in_head = False
        self._in_body = True
        self._disarm()
        self._arm(self.limits.body_timeout, "body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The whole request is in: no deadline until the next one starts."""
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    # -- refusals ----------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what the parser refuses (or to a callback's :class:`_Refused`),
        as problem+json."""
        refusal = self._refusal or (400, "The request is not valid HTTP/1.1.")
        self._refusal = None
        self._refuse(*refusal)

    def _stop(self, status: int, detail: str) -> None:
        self._refusal = (status, detail)
        raise _Refused(detail)

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` (unless an answer has started) and close the connection."""
        self._refusal = (status, detail)
        self._disarm()
        if self.transport is None or self.transport.is_closing():
            return
        cycle = self.cycle
        # Never a second answer to a request already answered (the app may answer before the
        # body is all in, e.g. a 413), nor an answer into one being written: only closed.
        if self._in_body:
            answered = cycle is not None and cycle.response_started
        else:
            answered = cycle is not None and cycle.response_started and not cycle.response_complete
        if cycle is not None and not cycle.response_complete:
            # The app's task may still be waiting for the body: it now sees a disconnect and
            # whatever it answers goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        log.warning(
            "request refused at the edge: %d %s",
            status,
            detail,
            extra={"status": status, "client": self.client[0] if self.client else None},
        )
        if not answered:
            self.transport.write(_problem_response(status, detail))
        self.transport.close()

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, what: str) -> None:
        self._timer = None
        self._refuse(408, f"The request's {what} did not arrive in time.")


def _problem_response(status: int, detail: str) -> bytes:
    body = json.dumps(problem_body(status, detail=detail), separators=(",", ":")).encode()
    head = (
        f"content-type: {PROBLEM_JSON}\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-request-id: {new_id()}\r\n"
        "connection: close\r\n\r\n"
    ).encode("ascii")
    return STATUS_LINE[status] + head + body


def edge_protocol(limits: EdgeLimits) -> type[EdgeHttpProtocol]:
    """An :class:`EdgeHttpProtocol` class bound to ``limits``, for ``uvicorn.Config(http=)``."""
    return type("BoundEdgeHttpProtocol", (EdgeHttpProtocol,), {"limits": limits})
