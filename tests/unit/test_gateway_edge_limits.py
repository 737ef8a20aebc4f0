"""The gateway's edge limits come from the environment, with sane defaults."""

from __future__ import annotations

import pytest
from gunicorn import config as gunicorn_config

from eventpost.settings import Settings
from gateway.edge_http import EdgeHttpProtocol, EdgeLimits, edge_protocol


def test_defaults_let_through_only_what_the_services_gunicorn_takes():
    limits = EdgeLimits.from_settings(Settings.from_env("gateway", {}))
    assert limits == EdgeLimits()
    gunicorn = gunicorn_config.Config()  # the services run with gunicorn's defaults
    # the request line the gateway forwards: method, target, version
    assert len("OPTIONS  HTTP/1.1") + limits.max_url_bytes < gunicorn.limit_request_line
    assert limits.max_field_bytes < gunicorn.limit_request_field_size
    assert limits.max_headers <= gunicorn.limit_request_fields


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
