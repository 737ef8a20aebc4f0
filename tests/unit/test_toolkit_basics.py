"""Settings, JSON logs and times."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from eventpost.logs import JsonFormatter, request_id_var
from eventpost.settings import Settings
from eventpost.timeutil import format_time, parse_rfc3339, parse_time


def test_settings_defaults_follow_api_md():
    s = Settings.from_env("users", {})
    assert s.gateway_port == 8000
    assert s.port == 8001
    assert s.data_dir == Path("var")
    assert s.mongodb_url is None
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert (s.smtp_host, s.smtp_port, s.smtp_tls) == ("127.0.0.1", 1025, "none")
    assert s.mail_from == "EventPost <no-reply@eventpost.local>"
    assert s.consul_http_addr is None
    assert s.dispatch_interval == 1.0
    assert s.max_body_bytes == 64 * 1024


def test_settings_read_the_environment():
    s = Settings.from_env(
        "events",
        {
            "GATEWAY_PORT": "9000",
            "EVENTS_PORT": "9002",
            "DATA_DIR": "/tmp/x",
            "MONGODB_URL": "mongodb://db",
            "SMTP_TLS": "starttls",
            "DISPATCH_INTERVAL": "0.5",
            "RETRY_DELAYS": "0.1, 0.2",
        },
    )
    assert (s.gateway_port, s.port, s.data_dir) == (9000, 9002, Path("/tmp/x"))
    assert s.mongodb_url == "mongodb://db"
    assert s.smtp_tls == "starttls"
    assert s.dispatch_interval == 0.5
    assert s.retry_delays == (0.1, 0.2)


@pytest.mark.parametrize(
    ("name", "value"), [("SMTP_TLS", "maybe"), ("GATEWAY_PORT", "x"), ("DISPATCH_INTERVAL", "a")]
)
def test_bad_settings_say_which(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_env("x", {name: value})


def test_json_log_line_has_the_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("users"))
    logger = logging.getLogger("test.jsonlog")
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id_var.set("rid-1")
    try:
        logger.warning("hello %s", "there", extra={"user_id": "u1"})
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    assert "\n" not in line
    record = json.loads(line)
    assert record["service"] == "users"
    assert record["level"] == "WARNING"
    assert record["request_id"] == "rid-1"
    assert record["message"] == "hello there"
    assert record["user_id"] == "u1"
    assert record["time"].endswith("Z")


def test_times_are_fixed_width_utc_and_sort_as_times():
    plus_one = timezone(timedelta(hours=1))
    a = parse_time("2026-12-01T20:00:00+01:00")
    assert a == datetime(2026, 12, 1, 19, tzinfo=UTC)
    assert format_time(a) == "2026-12-01T19:00:00.000000Z"
    later = datetime(2026, 12, 1, 19, 0, 0, 500000, tzinfo=plus_one)
    assert format_time(a) > format_time(later) == "2026-12-01T18:00:00.500000Z"
    with pytest.raises(ValueError):
        parse_time("2026-12-01T20:00:00")
    with pytest.raises(ValueError):
        format_time(datetime(2026, 1, 1))


def test_times_before_year_1000_keep_four_digits():
    # Found by schemathesis: "0346-09-01T03:06:19.403+05:25" came back as "346-08-31T...Z",
    # which is not the fixed-width form, no longer sorted as a time and could not be read back.
    dt = parse_rfc3339("0346-09-01T03:06:19.403+05:25")
    assert format_time(dt) == "0346-08-31T21:41:19.403000Z"
    assert parse_time(format_time(dt)) == dt
    assert format_time(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000Z"
    early, late = datetime(999, 1, 1, tzinfo=UTC), datetime(1000, 1, 1, tzinfo=UTC)
    assert format_time(early) < format_time(late)


@pytest.mark.parametrize(
    "value",
    [
        # Outside years 1-9999 once in UTC: an OverflowError (a 500) before the fix.
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        # Digits of other scripts matched \d.
        "\uff12\uff10\uff12\uff16-12-01T20:00:00Z",
        "\u0662\u0660\u0662\u0666-12-01T20:00:00Z",
        "0000-01-01T00:00:00Z",
    ],
)
def test_input_times_outside_the_range_are_value_errors(value):
    with pytest.raises(ValueError):
        parse_rfc3339(value)


def test_logged_paths_carry_no_email_addresses():
    from eventpost.logs import loggable_path

    assert loggable_path("/v1/users/me/emails/ann@example.com") == "/v1/users/me/emails/***"
    assert loggable_path("/v1/users/me/emails/ann%40example.com") == "/v1/users/me/emails/***"
    assert loggable_path("/v1/events/abc.ics") == "/v1/events/abc.ics"
