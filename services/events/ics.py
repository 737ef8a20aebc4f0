"""An event as an iCalendar (RFC 5545) object, built with the ``icalendar`` library."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from icalendar import Calendar, Event

from eventpost.timeutil import parse_time

PRODID = "-//EventPost//Events 1.0//EN"


def event_calendar(event: Mapping[str, Any], version: int, uid_domain: str = "eventpost") -> bytes:
    """A VCALENDAR holding one VEVENT for ``event`` (its public form). Times are UTC;
    ``DTSTAMP`` and ``LAST-MODIFIED`` are the event's last change, ``SEQUENCE`` counts its
    revisions, so calendar clients can tell a newer copy from an older one."""
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    vevent = Event()
    vevent.add("uid", f"{event['id']}@{uid_domain}")
    vevent.add("dtstamp", parse_time(event["updated_at"]))
    vevent.add("created", parse_time(event["created_at"]))
    vevent.add("last-modified", parse_time(event["updated_at"]))
    vevent.add("sequence", max(0, version - 1))
    vevent.add("dtstart", parse_time(event["starts_at"]))
    if event.get("ends_at"):
        vevent.add("dtend", parse_time(event["ends_at"]))
    vevent.add("summary", event["title"])
    if event.get("description"):
        vevent.add("description", event["description"])
    place = event.get("place") or {}
    location = ", ".join(part for part in (place.get("name"), place.get("address")) if part)
    if location:
        vevent.add("location", location)
    if place.get("lat") is not None and place.get("lng") is not None:
        vevent.add("geo", (place["lat"], place["lng"]))
    if event.get("topics"):
        vevent.add("categories", list(event["topics"]))
    cal.add_component(vevent)
    return cal.to_ical()
