"""The gateway's upstream HTTP client against scripted TCP servers (real sockets, exact bytes):
keep-alive reuse and when a connection is dropped, the ways an answer can be framed, and the
three failures it tells apart (not sent, broken, timed out)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.upstream_http import ExchangeFailed, NotSent, UpstreamHttp

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Upstream"], Awaitable[None]]


class Upstream:
    """A TCP server whose ``handler`` runs once per connection; records what it was sent."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        self.bodies.append(await reader.readexactly(length))
        return head


def answering(*answers: bytes, close: bool = False) -> Handler:
    """Answers each request on a connection with the next of ``answers`` (the last repeats)."""

    async def handler(reader, writer, upstream: Upstream) -> None:
        turn = 0
        while True:
            await upstream.read_request(reader)
            writer.write(answers[min(turn, len(answers) - 1)])
            await writer.drain()
            turn += 1
            if close:
                return

    return handler


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def get(http: UpstreamHttp, base: str, target: str = "/x", **kwargs):
    kwargs.setdefault("connect_timeout", 2.0)
    kwargs.setdefault("total_timeout", 5.0)
    method = kwargs.pop("method", "GET")
    return await http.request(base, method, target, kwargs.pop("headers", {}), **kwargs)


def test_a_connection_is_kept_and_reused():
    async def scenario():
        async with Upstream(answering(OK)) as up:
            http = UpstreamHttp()
            answers = [await get(http, up.base, f"/x/{i}") for i in range(3)]
            await http.close()
            return up, answers

    up, answers = run(scenario())
    assert [a.status for a in answers] == [200, 200, 200]
    assert answers[0].body == b"ok" and answers[0].headers["content-type"] == "text/plain"
    assert up.connections == 1
    assert up.heads[2].startswith(b"GET /x/2 HTTP/1.1\r\nHost: 127.0.0.1:")


def test_headers_and_body_are_sent_as_given():
    async def scenario():
        async with Upstream(answering(OK)) as up:
            http = UpstreamHttp()
            await get(http, up.base, "/e?q=a%20b", method="POST", headers={"X-A": "1"}, body=b"{}")
            await get(http, up.base, "/e", method="PATCH")
            await http.close()
            return up

    up = run(scenario())
    assert up.heads[0].startswith(b"POST /e?q=a%20b HTTP/1.1\r\n")
    assert b"\r\nX-A: 1\r\n" in up.heads[0] and b"\r\nContent-Length: 2\r\n" in up.heads[0]
    assert up.bodies == [b"{}", b""]
    assert b"\r\nContent-Length: 0\r\n" in up.heads[1]


@pytest.mark.parametrize(
    "answer, body",
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"abcde",
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, b"ok"),
    ],
    ids=["chunked", "204", "interim-100"],
)
def test_answers_framed_every_way_are_read_whole(answer, body):
    async def scenario():
        async with Upstream(answering(answer)) as up:
            http = UpstreamHttp()
            first = await get(http, up.base)
            second = await get(http, up.base)
            await http.close()
            return up, first, second

    up, first, second = run(scenario())
    assert first.body == second.body == body
    assert first.status == (200 if body else 204)
    assert up.connections == 1


def test_a_body_until_the_connection_closes_is_read_and_the_connection_not_kept():
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"

    async def scenario():
        async with Upstream(answering(until_close, close=True)) as up:
            http = UpstreamHttp()
            answers = [await get(http, up.base) for _ in range(2)]
            await http.close()
            return up, answers

    up, answers = run(scenario())
    assert [a.body for a in answers] == [b"all of it"] * 2
    assert up.connections == 2


def test_connection_close_and_head_are_not_reused():
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"

    async def scenario():
        async with Upstream(answering(closing)) as closer, Upstream(answering(head)) as header:
            http = UpstreamHttp()
            await get(http, closer.base)
            await get(http, closer.base)
            first = await get(http, header.base, method="HEAD")
            await get(http, header.base, method="HEAD")
            await http.close()
            return closer, header, first

    closer, header, first = run(scenario())
    assert closer.connections == 2
    assert header.connections == 2  # a HEAD answer's Content-Length announces no body
    assert first.status == 200 and first.body == b""
    assert first.headers["Content-Length"] == "1234"


def test_an_idle_connection_older_than_the_keepalive_is_not_used():
    now = [0.0]

    async def scenario():
        async with Upstream(answering(OK)) as up:
            http = UpstreamHttp(keepalive_timeout=1.0, clock=lambda: now[0])
            await get(http, up.base)
            now[0] = 0.5
            await get(http, up.base)  # reused: idle for 0.5 s
            now[0] = 2.0
            await get(http, up.base)  # idle for 1.5 s: closed, a new one made
            await http.close()
            return up

    assert run(scenario()).connections == 2


def test_refused_is_not_sent():
    async def scenario():
        async with Upstream(answering(OK)) as up:
            base = up.base
        await asyncio.sleep(0.05)
        http = UpstreamHttp()
        with pytest.raises(NotSent):
            await get(http, base)

    run(scenario())


def test_a_close_before_the_answer_and_garbage_are_broken_exchanges():
    async def hang_up(reader, writer, upstream):
        await upstream.read_request(reader)

    async def scenario():
        http = UpstreamHttp()
        async with Upstream(hang_up) as up:
            with pytest.raises(ExchangeFailed, match="closed"):
                await get(http, up.base)
        async with Upstream(answering(b"SMTP ready\r\n\r\n")) as up:
            with pytest.raises(ExchangeFailed, match="not valid HTTP"):
                await get(http, up.base)
        await http.close()

    run(scenario())


def test_the_total_deadline_raises_timeout_and_drops_the_connection():
    async def silent(reader, writer, upstream):
        await upstream.read_request(reader)
        await reader.read()  # until the client closes

    async def scenario():
        async with Upstream(silent) as up:
            http = UpstreamHttp()
            with pytest.raises(TimeoutError):
                await get(http, up.base, total_timeout=0.2)
            with pytest.raises(TimeoutError):
                await get(http, up.base, total_timeout=0.2)
            await http.close()
            return up

    assert run(scenario()).connections == 2


def test_a_header_that_would_split_the_head_is_refused_before_sending():
    async def scenario():
        async with Upstream(answering(OK)) as up:
            http = UpstreamHttp()
            with pytest.raises(ValueError, match="split"):
                await get(http, up.base, headers={"X-A": "1\r\nX-Admin: yes"})
            await http.close()
            return up

    assert run(scenario()).connections == 0


def test_at_most_limit_exchanges_at_once_and_a_cancelled_waiter_frees_nothing():
    state = {"now": 0, "most": 0}

    async def slow(reader, writer, upstream):
        while True:
            await upstream.read_request(reader)
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            await asyncio.sleep(0.05)
            state["now"] -= 1
            writer.write(OK)
            await writer.drain()

    async def scenario():
        async with Upstream(slow) as up:
            http = UpstreamHttp(limit=2)
            waiting = asyncio.gather(*(get(http, up.base) for _ in range(3)))
            await asyncio.sleep(0.01)
            doomed = asyncio.ensure_future(get(http, up.base))
            await asyncio.sleep(0.01)
            doomed.cancel()
            answers = await waiting
            most_before, state["most"] = state["most"], 0
            after = await asyncio.gather(*(get(http, up.base) for _ in range(4)))
            await http.close()
            return answers + after, most_before

    answers, most_before = run(scenario())
    assert [a.status for a in answers] == [200] * 7
    assert most_before == 2
    assert state["most"] == 2  # neither lost nor doubled by the cancelled waiter
