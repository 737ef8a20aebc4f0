"""Times: aware UTC datetimes in code, one fixed-width RFC 3339 string in stores and JSON.

The string form ``2026-12-01T19:00:00.000000Z`` is fixed-width, so comparing and sorting the
strings (as both storage adapters do) orders them as the times they stand for."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utcnow() -> datetime:
    """The current time, aware, in UTC (the default clock; tests inject their own)."""
    return datetime.now(UTC)


def format_time(dt: datetime) -> str:
    """The canonical UTC string of an aware datetime."""
    if dt.tzinfo is None:
        raise ValueError("naive datetimes are not accepted; give an offset")
    return dt.astimezone(UTC).strftime(_FORMAT)


def parse_time(value: str) -> datetime:
    """An aware datetime from an RFC 3339 string with an offset (or ``Z``)."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("a time needs an offset, e.g. 2026-12-01T20:00:00+01:00")
    return dt.astimezone(UTC)
