"""The gateway's edge limits come from the environment, with sane defaults; its protocol's
writes of one loop turn leave as one."""

from __future__ import annotations

import asyncio
import socket

import pytest
from granian.http import HTTP1Settings

from eventpost.settings import Settings
from gateway.edge_http import CoalescingTransport, EdgeHttpProtocol, EdgeLimits, edge_protocol
from gateway.proxy import FORWARD_REQUEST_HEADERS

# hyper (granian's HTTP/1 parser) refuses a request head of more than 100 fields and a
# target of 65,534 bytes or more; granian does not make either configurable.
HYPER_MAX_HEADERS = 100
HYPER_MAX_URI_BYTES = 65_534


def test_defaults_let_through_only_what_the_services_server_takes():
    limits = EdgeLimits.from_settings(Settings.from_env("gateway", {}))
    assert limits == EdgeLimits()
    server = HTTP1Settings()  # the services run granian with its HTTP/1 defaults
    # the head the gateway forwards: the request line, the forwarded fields and its own four
    # (X-Request-ID, X-Forwarded-For, -Proto, -Host), each no larger than the client's limits
    forwarded = len(FORWARD_REQUEST_HEADERS) + 4
    assert limits.max_url_bytes < HYPER_MAX_URI_BYTES
    assert forwarded <= HYPER_MAX_HEADERS
    assert limits.max_url_bytes + limits.max_header_bytes + 4 * 200 < server.max_buffer_size


def test_each_limit_is_a_variable():
    env = {
        "GATEWAY_MAX_URL_BYTES": "2000",
        "GATEWAY_MAX_HEADER_BYTES": "4096",
        "GATEWAY_MAX_HEADER_FIELD_BYTES": "1024",
        "GATEWAY_MAX_HEADERS": "20",
        "GATEWAY_HEADER_TIMEOUT": "0.5",
        "GATEWAY_BODY_TIMEOUT": "2",
    }
    limits = EdgeLimits.from_settings(Settings.from_env("gateway", env))
    assert limits == EdgeLimits(2000, 4096, 1024, 20, 0.5, 2.0)


@pytest.mark.parametrize(
    "name, value", [("GATEWAY_HEADER_TIMEOUT", "0"), ("GATEWAY_MAX_HEADER_BYTES", "10")]
)
def test_nonsense_is_refused(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env("gateway", {name: value})


def test_the_protocol_class_carries_its_limits():
    limits = EdgeLimits(max_url_bytes=100)
    bound = edge_protocol(limits)
    assert issubclass(bound, EdgeHttpProtocol)
    assert bound.limits is limits
    assert EdgeHttpProtocol.limits == EdgeLimits()


class _CountingTransport:
    """A real transport, with its write calls counted."""

    def __init__(self, transport):
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data):
        self.writes.append(data)
        self.transport.write(data)

    def __getattr__(self, name):
        return getattr(self.transport, name)


async def _pair():
    """A real socket transport on one end of a socketpair and a reader on the other."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    counted = _CountingTransport(transport)
    return CoalescingTransport(counted, loop), counted, reader, writer


def test_the_writes_of_one_loop_turn_leave_as_one():
    async def scenario():
        coalescing, counted, reader, writer = await _pair()
        coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        coalescing.write(b"ok")
        assert counted.writes == []  # not yet: at the end of this turn
        await asyncio.sleep(0)
        assert counted.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
        coalescing.write(b"next")  # a later turn: a write of its own
        await asyncio.sleep(0)
        assert counted.writes[1:] == [b"next"]
        coalescing.close()
        received = await reader.read()
        writer.close()
        return received

    assert asyncio.run(scenario()) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\noknext"


def test_close_sends_what_is_queued_first_and_abort_drops_it():
    async def scenario(how):
        coalescing, _counted, reader, writer = await _pair()
        coalescing.write(b"last words")
        getattr(coalescing, how)()
        try:
            return await reader.read()
        except ConnectionResetError:
            return b""
        finally:
            writer.close()

    assert asyncio.run(scenario("close")) == b"last words"
    assert asyncio.run(scenario("abort")) == b""
