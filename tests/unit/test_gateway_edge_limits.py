"""The gateway's edge limits come from the environment, with sane defaults."""

from __future__ import annotations

import pytest
from granian.http import HTTP1Settings

from eventpost.settings import Settings
from gateway.edge_http import EdgeHttpProtocol, EdgeLimits, edge_protocol
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
