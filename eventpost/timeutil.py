"""Times: aware UTC datetimes in code, one fixed-width RFC 3339 string in stores and JSON.

The string form ``2026-12-01T19:00:00.000000Z`` is fixed-width, so comparing and sorting the
strings (as both storage adapters do) orders them as the times they stand for."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]

# ASCII digits only (``\d`` would also take other scripts' digits).
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def utcnow() -> datetime:
    """The current time, aware, in UTC (the default clock; tests inject their own)."""
    return datetime.now(UTC)


def format_time(dt: datetime) -> str:
    """The canonical UTC string of an aware datetime."""
    if dt.tzinfo is None:
        raise ValueError("naive datetimes are not accepted; give an offset")
    # isoformat pads the year to 4 digits; strftime's %Y does not on glibc ("346-08-31...").
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """An aware datetime from an ISO 8601 string with an offset (or ``Z``), such as the stored
    form. Client input goes through the stricter :func:`parse_rfc3339`."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        raise ValueError("a time needs an offset, e.g. 2026-12-01T20:00:00+01:00")
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+01:00 is before year 1 in UTC: no datetime holds it.
        raise ValueError(f"{value!r} is out of the range of years 1-9999 in UTC") from None


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
