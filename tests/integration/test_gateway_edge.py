"""Bad HTTP at the edge, against a real ``python -m gateway`` process over raw sockets: oversized
header blocks (431), very long targets (414), clients too slow with their headers or their body
(408, then closed), invalid methods and bodies that lie about their length (400 or 408), all
problem+json; and the gateway keeps answering everybody else meanwhile.

Two gateways: ``quick`` with deadlines of a second (injected through the environment, so the
refusals come fast) and ``patient`` with long ones (the slow clients hold their connections
while the normal requests go through)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.http_doubles import FakeServices, start_gateway_process


@dataclass
class Gateway:
    port: int
    log: Path

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One ordinary request on a fresh connection: (status, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def fakes() -> Iterator[FakeServices]:
    with FakeServices() as services:
        yield services


def _start(fakes: FakeServices, tmp: Path, **env: str) -> Iterator[Gateway]:
    proc, url, log_path = start_gateway_process(
        fakes, tmp, graceful_timeout=1, GATEWAY_RATE_LIMIT="0", LOG_LEVEL="WARNING", **env
    )
    try:
        yield Gateway(int(url.rsplit(":", 1)[1]), log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def quick(fakes, tmp_path_factory) -> Iterator[Gateway]:
    yield from _start(
        fakes,
        tmp_path_factory.mktemp("quick"),
        GATEWAY_HEADER_TIMEOUT="1",
        GATEWAY_BODY_TIMEOUT="1",
    )


@pytest.fixture(scope="module")
def patient(fakes, tmp_path_factory) -> Iterator[Gateway]:
    yield from _start(
        fakes,
        tmp_path_factory.mktemp("patient"),
        GATEWAY_HEADER_TIMEOUT="600",
        GATEWAY_BODY_TIMEOUT="600",
    )


def connect(gw: Gateway) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(gw: Gateway, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything answered until the gateway closes."""
    with connect(gw) as sock:
        # Refused before all of it was sent: the answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        return read_all(sock)


@dataclass
class Parsed:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict:
        assert self.headers["content-type"] == "application/problem+json"
        doc = json.loads(self.body)
        assert doc["status"] == self.status
        return doc


def responses(raw: bytes) -> list[Parsed]:
    """The HTTP/1.1 responses (with Content-Length) in ``raw``, in order."""
    found = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        found.append(Parsed(status, headers, rest[:length]))
        raw = rest[length:]
    return found


def only(raw: bytes) -> Parsed:
    (answer,) = responses(raw)
    assert answer.headers.get("connection") == "close"
    return answer


def request_head(target: str = "/v1/events", *extra: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- sizes ---------------------------------------------------------------------------------


def test_a_header_block_over_the_limit_gets_431(quick):
    fill = [f"X-Fill-{i}: " + "a" * 4000 for i in range(5)]
    answer = only(exchange(quick, request_head("/v1/events", *fill)))
    assert answer.status == 431
    assert "header block" in answer.problem()["detail"]


def test_one_header_field_over_the_limit_gets_431(quick):
    # Below the block limit, above the gateway's limit of one field (8000).
    answer = only(
        exchange(quick, request_head("/v1/events", "Authorization: Bearer " + "t" * 9000))
    )
    assert answer.status == 431
    assert "header field is larger" in answer.problem()["detail"]


def test_too_many_header_fields_get_431(quick):
    fields = [f"X-F{i}: v" for i in range(150)]
    answer = only(exchange(quick, request_head("/v1/events", *fields)))
    assert answer.status == 431
    assert "header fields" in answer.problem()["detail"]


def test_an_endless_header_line_is_refused_before_it_ends(quick):
    # No end of line ever comes: the bytes received while in the head are bounded too.
    with connect(quick) as sock:
        sock.sendall(b"GET /v1/events HTTP/1.1\r\nX-Fill: ")
        try:
            for _ in range(100):
                sock.sendall(b"a" * 4096)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = only(read_all(sock))
    assert answer.status == 431


def test_a_target_over_the_limit_gets_414(quick):
    answer = only(exchange(quick, request_head("/v1/events?q=" + "a" * 5000)))
    assert answer.status == 414
    assert "request target" in answer.problem()["detail"]


def test_a_target_within_the_limit_is_forwarded(quick):
    status, body = quick.request("GET", "/v1/events?q=" + "a" * 3900)
    assert status == 200
    assert json.loads(body)["query"] == "q=" + "a" * 3900


def test_a_header_block_within_the_limit_is_forwarded(quick):
    raw = exchange(
        quick,
        request_head(
            "/v1/events", "X-Fill: " + "a" * 7000, "X-More: " + "b" * 7000, "Connection: close"
        ),
    )
    (answer,) = responses(raw)
    assert answer.status == 200


# -- slow clients ----------------------------------------------------------------------------


def test_a_client_that_sends_nothing_gets_408_and_is_closed(quick):
    with connect(quick) as sock:
        answer = only(read_all(sock))
    assert answer.status == 408
    assert "headers" in answer.problem()["detail"]


def test_a_client_sending_its_headers_a_byte_at_a_time_gets_408(quick):
    head = request_head("/v1/events", "X-Slow: " + "s" * 200)
    with connect(quick) as sock:
        try:
            for byte in head:  # never finishes within the deadline (one byte each 50 ms)
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = only(read_all(sock))
    assert answer.status == 408


def test_a_kept_alive_connection_times_its_next_request_too(quick):
    with connect(quick) as sock:
        sock.sendall(request_head("/health"))
        sock.sendall(b"GET /health HTT")  # the second request's head never ends
        first, second = responses(read_all(sock))
    assert first.status == 200
    assert second.status == 408


def test_a_body_shorter_than_its_content_length_gets_408(quick):
    head = request_head("/v1/users", "Content-Type: application/json", "Content-Length: 100")
    answer = only(exchange(quick, head.replace(b"GET", b"POST") + b'{"a": 1}'))
    assert answer.status == 408
    assert "body" in answer.problem()["detail"]


def test_a_body_dribbling_in_gets_408(quick):
    head = request_head("/v1/users", "Content-Type: application/json", "Content-Length: 4000")
    with connect(quick) as sock:
        sock.sendall(head.replace(b"GET", b"POST"))
        try:
            for _ in range(4000):
                sock.sendall(b" ")
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = only(read_all(sock))
    assert answer.status == 408


def test_a_body_announced_too_large_gets_413_and_its_bytes_are_not_waited_for(quick):
    head = request_head("/v1/users", "Content-Type: application/json", "Content-Length: 999999")
    with connect(quick) as sock:
        sock.sendall(head.replace(b"GET", b"POST") + b"{")
        # The 413 goes out before the body; after the body deadline the connection is closed
        # without a second answer.
        (answer,) = responses(read_all(sock))
    assert answer.status == 413
    assert answer.problem()["status"] == 413


def test_a_chunked_body_that_never_ends_gets_408(quick):
    head = request_head("/v1/users", "Content-Type: application/json", "Transfer-Encoding: chunked")
    answer = only(exchange(quick, head.replace(b"GET", b"POST") + b"2\r\n{}\r\n"))
    assert answer.status == 408


# -- what the parser refuses ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"BREW /v1/events HTTP/1.1\r\nHost: g\r\n\r\n", id="unknown-method"),
        pytest.param(b"G(T /v1/events HTTP/1.1\r\nHost: g\r\n\r\n", id="not-a-token"),
        pytest.param(b"hello there\r\n\r\n", id="not-http"),
        pytest.param(b"GET /v1/events HTTP/9.9\r\nHost: g\r\n\r\n", id="bad-version"),
        pytest.param(
            b"POST /v1/users HTTP/1.1\r\nHost: g\r\nContent-Length: ten\r\n\r\n", id="bad-length"
        ),
        pytest.param(
            b"POST /v1/users HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
            b"\r\n{}",
            id="two-lengths",
        ),
        pytest.param(
            b"POST /v1/users HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="length-and-chunked",
        ),
        pytest.param(
            b"POST /v1/users HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            id="bad-chunk-size",
        ),
        pytest.param(
            b"POST /v1/users HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}XX0\r\n\r\n",
            id="chunk-longer-than-its-size",
        ),
    ],
)
def test_what_the_parser_refuses_gets_400_problem_json(quick, data):
    answer = only(exchange(quick, data))
    assert answer.status == 400
    assert answer.problem()["detail"] == "The request is not valid HTTP/1.1."


def test_a_body_longer_than_its_content_length_leaves_garbage_that_gets_400(quick):
    head = request_head("/v1/users", "Content-Type: application/json", "Content-Length: 2")
    raw = exchange(quick, head.replace(b"GET", b"POST") + b"{}GARBAGE MORE\r\n\r\n")
    *before, last = responses(raw)
    # The extra bytes are read as the next request: refused, and the connection closed. If
    # they arrive before the first answer is written, that answer is dropped with it.
    assert [answer.status for answer in before] in ([], [200])
    assert last.status == 400
    assert last.headers["connection"] == "close"


def test_an_upgrade_nobody_serves_is_answered_as_plain_http(quick):
    # No WebSocket library is installed: the request is answered, and the connection is then
    # closed when idle, with no stray 408 from a deadline.
    head = request_head(
        "/health",
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    )
    (answer,) = responses(exchange(quick, head))
    assert answer.status == 200


def test_a_method_the_parser_knows_but_nobody_serves_is_a_problem(quick):
    raw = exchange(quick, request_head("/health", "Connection: close", method="PROPFIND"))
    (answer,) = responses(raw)
    assert answer.status == 405
    assert answer.headers["content-type"] == "application/problem+json"


# -- everybody else meanwhile -----------------------------------------------------------------


#: What the slow clients send a byte at a time: a long head, or a whole head and then a body.
SLOW = {
    "headers": (b"", request_head("/v1/events", "X-Slow: " + "s" * 10_000)),
    "body": (
        request_head(
            "/v1/users", "Content-Type: application/json", "Content-Length: 10000"
        ).replace(b"GET", b"POST"),
        b" " * 10_000,
    ),
}


class SlowClients:
    """``count`` connections that each send ``first`` at once and then ``dribble`` one byte at
    a time, round by round, from one thread, until stopped."""

    def __init__(self, gw: Gateway, count: int, what: str, pause: float = 0.05) -> None:
        first, self.head = SLOW[what]
        self.socks = [connect(gw) for _ in range(count)]
        for sock in self.socks:
            sock.sendall(first)
        self.pause = pause
        self.sent = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.is_set() and self.sent < len(self.head) - 1:
            for sock in self.socks:
                with contextlib.suppress(OSError):  # refused: it has its answer to read
                    sock.sendall(self.head[self.sent : self.sent + 1])
            self.sent += 1
            self.stopped.wait(self.pause)

    def __enter__(self) -> SlowClients:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        for sock in self.socks:
            sock.close()

    def answered(self) -> list[bytes]:
        """What each connection got so far (b"" when nothing yet)."""
        got = []
        for sock in self.socks:
            sock.setblocking(False)
            try:
                got.append(sock.recv(65536))
            except BlockingIOError:
                got.append(b"")
            finally:
                sock.setblocking(True)
        return got


def normal_requests(gw: Gateway, count: int) -> list[int]:
    statuses = []
    for i in range(count):
        status, _ = gw.request("GET", "/health" if i % 2 else f"/v1/events?page={i}")
        statuses.append(status)
    return statuses


@pytest.mark.parametrize("what", SLOW)
def test_while_50_slow_clients_hold_connections_100_requests_succeed(patient, what):
    with SlowClients(patient, 50, what) as slow:
        statuses = normal_requests(patient, 100)
        assert slow.sent > 0
        assert slow.answered() == [b""] * 50  # all 50 still held, none answered yet
    assert statuses == [200] * 100


@pytest.mark.parametrize("what", SLOW)
def test_slow_clients_are_cut_off_while_others_are_answered(quick, what):
    with SlowClients(quick, 50, what) as slow:
        statuses = normal_requests(quick, 100)
        # They would take minutes to finish: each gets its 408 after the deadline.
        cut = [only(read_all(sock)).status for sock in slow.socks]
    assert statuses == [200] * 100
    assert cut == [408] * 50
