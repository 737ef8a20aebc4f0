"""Times: aware UTC datetimes in code, one fixed-width RFC 3339 string in stores and JSON.

The string form ``2026-12-01T19:00:00.000000Z`` is fixed-width, so comparing and sorting the
strings (as both storage adapters do) orders them as the times they stand for."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)


def utcnow() -> datetime:
    """The current time, aware, in UTC (the default clock; tests inject their own)."""
    return datetime.now(UTC)


def format_time(dt: datetime) -> str:
    """The canonical UTC string of an aware datetime."""
    if dt.tzinfo is None:
        raise ValueError("naive datetimes are not accepted; give an offset")
    return dt.astimezone(UTC).strftime(_FORMAT)


def parse_time(value: str) -> datetime:
    """An aware datetime from an ISO 8601 string with an offset (or ``Z``), such as the stored
    form. Client input goes through the stricter :func:`parse_rfc3339`."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("a time needs an offset, e.g. 2026-12-01T20:00:00+01:00")
    return dt.astimezone(UTC)


def parse_rfc3339(value: str) -> datetime:
    """An aware UTC datetime from an RFC 3339 date-time with an offset; ValueError otherwise."""
    if not _RFC3339.match(value):
        raise ValueError(
            "must be an RFC 3339 date-time with an offset, e.g. 2026-12-01T20:00:00+01:00"
        )
    text = value.replace("t", "T").replace("z", "Z")
    if text[10] == " ":
        text = text[:10] + "T" + text[11:]
    # Python accepts at most 6 fractional digits: drop the rest (sub-microsecond precision).
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a valid date-time") from None
