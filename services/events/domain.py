"""The events service's rules, without I/O: what an event is, how it is created and
patched, what a search asks for, and how results are shown.

Stored documents have the public shape of an event (see :func:`to_public`) plus the
store-managed ``version``; times are :func:`eventpost.timeutil.format_time` strings.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from eventpost.problems import ValidationProblem, field_error
from eventpost.timeutil import format_time, parse_rfc3339, parse_time
from eventpost.validation import LIMIT_DEFAULT, StrictModel, parse_limit

TITLE_MAX = 200
DESCRIPTION_MAX = 5000
PLACE_NAME_MAX = 200
ADDRESS_MAX = 500
TOPICS_MAX = 20
TOPIC_MAX = 40
QUERY_TOPICS_MAX = 20
Q_MAX = 200
RADIUS_DEFAULT_KM = 10.0
RADIUS_MAX_KM = 20_000.0
DISTANCE_DECIMALS = 3
EARTH_RADIUS_KM = 6371.0088

SEARCH_PARAMETERS = frozenset(
    {"topic", "from", "to", "near", "radius_km", "q", "sort", "limit", "cursor"}
)
SORTS = ("starts_at", "distance")

_TOPIC = re.compile(rf"^[a-z0-9](?:[a-z0-9-]{{0,{TOPIC_MAX - 2}}}[a-z0-9])?$")
# RFC 3339 date-time (section 5.6): a full date, "T" (or "t"/space), a full time, an offset.
# "+01:00" in an unencoded query string arrives as " 01:00" ("+" means space in a query).
_SPACE_FOR_PLUS = re.compile(r" (\d{2}:\d{2})$")


# -- values ---------------------------------------------------------------------------------


def canonical_time(value: str) -> str:
    """The stored form (UTC, fixed width) of an RFC 3339 date-time with an offset."""
    return format_time(parse_rfc3339(value))


def normalize_topic(value: str) -> str:
    """A topic as stored: stripped, lowercase; ValueError unless it is then a short slug."""
    topic = value.strip().lower()
    if not _TOPIC.match(topic):
        raise ValueError(
            f"a topic is 1-{TOPIC_MAX} characters of a-z, 0-9 and '-' (not at either end)"
        )
    return topic


def normalize_topics(values: Sequence[str]) -> list[str]:
    """Topics normalized and deduplicated, first occurrence order kept."""
    out: list[str] = []
    for value in values:
        topic = normalize_topic(value)
        if topic not in out:
            out.append(topic)
    return out


def _text(max_length: int):
    def check(value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        if len(value) > max_length:
            raise ValueError(f"must be at most {max_length} characters")
        return value

    return AfterValidator(check)


def _topic_list(values: list[str]) -> list[str]:
    return normalize_topics(values)


Title = Annotated[str, _text(TITLE_MAX)]
PlaceName = Annotated[str, _text(PLACE_NAME_MAX)]
Description = Annotated[str, Field(max_length=DESCRIPTION_MAX)]
Address = Annotated[str, Field(max_length=ADDRESS_MAX)]
Time = Annotated[str, AfterValidator(canonical_time)]
Topic = Annotated[str, AfterValidator(normalize_topic)]
Topics = Annotated[
    list[Topic], Field(min_length=1, max_length=TOPICS_MAX), AfterValidator(_topic_list)
]
Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]


# -- request bodies ---------------------------------------------------------------------------


class PlaceIn(StrictModel):
    """Where an event happens. ``lat`` and ``lng`` come together or not at all; an event
    without coordinates is never found by a ``near`` search."""

    name: PlaceName
    address: Address | None = None
    lat: Latitude | None = None
    lng: Longitude | None = None

    @model_validator(mode="after")
    def _both_coordinates(self) -> PlaceIn:
        if (self.lat is None) != (self.lng is None):
            missing = "lng" if self.lng is None else "lat"
            raise ValueError(f"lat and lng go together: {missing} is missing")
        return self


class EventIn(StrictModel):
    """``POST /v1/events``."""

    title: Title
    description: Description | None = None
    topics: Topics
    starts_at: Time
    ends_at: Time | None = None
    place: PlaceIn

    @field_validator("ends_at")
    @classmethod
    def _ends_after_start(cls, value: str | None, info: ValidationInfo) -> str | None:
        starts_at = info.data.get("starts_at")
        if value is not None and starts_at is not None and value < starts_at:
            raise ValueError("must not be before starts_at")
        return value


class PlacePatch(StrictModel):
    """A JSON merge patch (RFC 7396) of a place: absent fields are kept, ``null`` removes
    ``address``/``lat``/``lng``; ``name`` cannot be removed."""

    # Defaults are not validated, so an explicit null on ``name`` is refused (422).
    name: PlaceName = None  # type: ignore[assignment]
    address: Address | None = None
    lat: Latitude | None = None
    lng: Longitude | None = None


class EventPatch(StrictModel):
    """``PATCH /v1/events/{id}``: any event fields (merge patch semantics). ``null`` clears
    ``description`` and ``ends_at``; required fields cannot be set to null."""

    title: Title = None  # type: ignore[assignment]
    description: Description | None = None
    topics: Topics = None  # type: ignore[assignment]
    starts_at: Time = None  # type: ignore[assignment]
    ends_at: Time | None = None
    place: PlacePatch = None  # type: ignore[assignment]


# -- documents --------------------------------------------------------------------------------


def _place_doc(place: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": place["name"],
        "address": place.get("address"),
        "lat": place.get("lat"),
        "lng": place.get("lng"),
    }


def new_event(body: EventIn, event_id: str, now: datetime) -> dict[str, Any]:
    """The document of a new event."""
    stamp = format_time(now)
    return {
        "id": event_id,
        "title": body.title,
        "description": body.description or "",
        "topics": list(body.topics),
        "starts_at": body.starts_at,
        "ends_at": body.ends_at,
        "place": _place_doc(body.place.model_dump()),
        "created_at": stamp,
        "updated_at": stamp,
    }


EVENT_FIELDS = (
    "id",
    "title",
    "description",
    "topics",
    "starts_at",
    "ends_at",
    "place",
    "created_at",
    "updated_at",
)
_EDITABLE = ("title", "description", "topics", "starts_at", "ends_at", "place")


def apply_patch(current: Mapping[str, Any], patch: EventPatch) -> dict[str, Any]:
    """The editable fields that ``patch`` changes on ``current`` (empty when nothing
    changes). Raises :class:`ValidationProblem` when the result would not be a valid event."""
    sent = patch.model_dump(exclude_unset=True)
    merged = {name: current.get(name) for name in _EDITABLE}
    for name, value in sent.items():
        if name == "place":
            place = dict(current.get("place") or {})
            place.update(value)
            try:
                checked = PlaceIn.model_validate(place, strict=True)
            except ValueError as exc:
                raise _nested_problem("place", exc) from None
            merged["place"] = _place_doc(checked.model_dump())
        elif name == "description":
            merged["description"] = value or ""
        else:
            merged[name] = value
    if merged["ends_at"] is not None and merged["ends_at"] < merged["starts_at"]:
        raise field_error("ends_at", "must not be before starts_at")
    return {name: merged[name] for name in _EDITABLE if merged[name] != current.get(name)}


def _nested_problem(prefix: str, exc: Exception) -> ValidationProblem:
    errors = []
    for err in getattr(exc, "errors", lambda: [])():
        loc = ".".join(str(part) for part in (prefix, *err["loc"]))
        errors.append({"field": loc, "message": err["msg"].removeprefix("Value error, ")})
    if not errors:
        errors = [{"field": prefix, "message": str(exc)}]
    return ValidationProblem(errors, detail=errors[0]["message"])


def next_updated_at(current: Mapping[str, Any], now: datetime) -> str:
    """``updated_at`` for a change of ``current``: now, but always later than the previous
    value (even if the clock stepped back), so consumers can order copies of an event."""
    stamp = format_time(now)
    previous = current.get("updated_at")
    if previous and stamp <= previous:
        stamp = format_time(parse_time(previous) + timedelta(microseconds=1))
    return stamp


def to_public(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An event as the API shows it (store bookkeeping left out; ``distance_km`` kept,
    rounded, when the document came from a ``near`` search)."""
    out = {name: doc.get(name) for name in EVENT_FIELDS}
    out["place"] = _place_doc(doc.get("place") or {"name": ""})
    if "distance_km" in doc and doc["distance_km"] is not None:
        out["distance_km"] = round(float(doc["distance_km"]), DISTANCE_DECIMALS)
    return out


def etag_of(doc: Mapping[str, Any]) -> str:
    """The strong entity tag of a stored event (its version), without quotes."""
    return f"v{doc['version']}"


def haversine_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    """Great-circle distance between two points, in km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lng2 - lng1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


# -- search -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Search:
    """A validated ``GET /v1/events`` query (hashable: it keys the read cache)."""

    topics: tuple[str, ...] = ()
    starts_from: str | None = None
    starts_to: str | None = None
    near: tuple[float, float] | None = None
    radius_km: float = RADIUS_DEFAULT_KM
    text: str | None = None
    sort: str = "starts_at"
    limit: int = LIMIT_DEFAULT
    cursor: str | None = None

    def fingerprint(self) -> str:
        """What a cursor is bound to: every criterion except ``limit`` and ``cursor``."""
        key = json.dumps(
            [
                self.topics,
                self.starts_from,
                self.starts_to,
                self.near,
                self.radius_km if self.near else None,
                self.text,
                self.sort,
            ]
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]


Params = Mapping[str, str | list[str]]


def _values(params: Params, name: str) -> list[str]:
    raw = params.get(name)
    if raw is None:
        return []
    return list(raw) if isinstance(raw, list) else [raw]


def _single(params: Params, name: str, errors: list[dict[str, str]]) -> str | None:
    values = _values(params, name)
    if len(values) > 1:
        errors.append({"field": name, "message": "give this parameter at most once"})
        return None
    return values[0] if values else None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def parse_search(params: Params) -> Search:
    """Validate the query parameters of ``GET /v1/events``; every problem found is named in
    one :class:`ValidationProblem` (422).

    Decisions (documented in the OpenAPI file): unknown parameters are refused; ``topic``
    may repeat and may also hold comma-separated topics; an empty ``q`` means no text
    filter; ``limit`` above 100 is clamped to 100, below 1 or not an integer is refused."""
    errors: list[dict[str, str]] = []
    for name in sorted(set(params) - SEARCH_PARAMETERS):
        errors.append({"field": name, "message": "unknown query parameter"})

    topics: list[str] = []
    for raw in _values(params, "topic"):
        for part in raw.split(","):
            try:
                topic = normalize_topic(part)
            except ValueError as exc:
                errors.append({"field": "topic", "message": str(exc)})
                continue
            if topic not in topics:
                topics.append(topic)
    if len(topics) > QUERY_TOPICS_MAX:
        errors.append({"field": "topic", "message": f"at most {QUERY_TOPICS_MAX} topics"})

    window: dict[str, str | None] = {"from": None, "to": None}
    for name in window:
        raw = _single(params, name, errors)
        if raw is None:
            continue
        try:
            window[name] = canonical_time(_SPACE_FOR_PLUS.sub(r"+\1", raw.strip()))
        except ValueError as exc:
            errors.append({"field": name, "message": str(exc)})
    if window["from"] and window["to"] and window["from"] > window["to"]:
        errors.append({"field": "to", "message": "must not be before from"})

    near = None
    raw_near = _single(params, "near", errors)
    if raw_near is not None:
        parts = raw_near.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            lat, lng = _finite(parts[0]), _finite(parts[1])
        except ValueError:
            errors.append({"field": "near", "message": "must be lat,lng (two numbers)"})
        else:
            if not -90 <= lat <= 90:
                errors.append({"field": "near", "message": "latitude must be in [-90, 90]"})
            elif not -180 <= lng <= 180:
                errors.append({"field": "near", "message": "longitude must be in [-180, 180]"})
            else:
                near = (lat, lng)

    radius = RADIUS_DEFAULT_KM
    raw_radius = _single(params, "radius_km", errors)
    if raw_radius is not None:
        try:
            radius = _finite(raw_radius)
        except ValueError:
            errors.append({"field": "radius_km", "message": "must be a number"})
        else:
            if not 0 < radius <= RADIUS_MAX_KM:
                errors.append(
                    {"field": "radius_km", "message": f"must be > 0 and <= {RADIUS_MAX_KM:g}"}
                )
        if raw_near is None:
            errors.append({"field": "radius_km", "message": "needs near"})

    text = None
    raw_q = _single(params, "q", errors)
    if raw_q is not None:
        text = " ".join(raw_q.split()) or None
        if text and len(text) > Q_MAX:
            errors.append({"field": "q", "message": f"must be at most {Q_MAX} characters"})

    sort = _single(params, "sort", errors) or "starts_at"
    if sort not in SORTS:
        errors.append({"field": "sort", "message": "must be starts_at or distance"})
    elif sort == "distance" and raw_near is None:
        errors.append({"field": "sort", "message": "sort=distance needs near"})

    limit = LIMIT_DEFAULT
    try:
        limit = parse_limit(_single(params, "limit", errors))
    except ValueError as exc:
        errors.append({"field": "limit", "message": str(exc)})

    cursor = _single(params, "cursor", errors) or None

    if errors:
        raise ValidationProblem(errors, detail=errors[0]["message"])
    search = Search(
        topics=tuple(topics),
        starts_from=window["from"],
        starts_to=window["to"],
        near=near,
        radius_km=radius,
        text=text,
        sort=sort,
        limit=limit,
    )
    if cursor is not None:
        # Validated here so a bad cursor is a 422 before any store work.
        decode_cursor(cursor, search)
    return replace(search, cursor=cursor)


def encode_cursor(search: Search, store_cursor: str) -> str:
    """The opaque cursor clients get: the store's, bound to the search it belongs to."""
    raw = json.dumps({"f": search.fingerprint(), "c": store_cursor}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, search: Search) -> str:
    """The store's cursor inside a client's cursor; 422 when malformed or issued for
    another search."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        fingerprint, inner = data["f"], data["c"]
        if not isinstance(fingerprint, str) or not isinstance(inner, str):
            raise ValueError
    except (ValueError, TypeError, KeyError, UnicodeError, binascii.Error):
        raise field_error("cursor", "malformed cursor") from None
    if fingerprint != search.fingerprint():
        raise field_error("cursor", "this cursor belongs to another search")
    return inner
