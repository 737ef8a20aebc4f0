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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from eventpost.errors import Forbidden, Invalid, InvalidMany, PreconditionFailed
from eventpost.models import LIMIT_DEFAULT, StrictModel, parse_limit
from eventpost.timeutil import format_time, parse_rfc3339, parse_time

if TYPE_CHECKING:
    from eventpost.auth import Claims

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
        # The limit holds for the text as sent (as the OpenAPI's maxLength says), spaces
        # around it included; what is stored is trimmed.
        if len(value) > max_length:
            raise ValueError(f"must be at most {max_length} characters")
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
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


def _not_before(field: str, earlier: str, name: str | None = None) -> Any:
    """The model validator of a time ``field`` that must not be before the time field
    ``earlier`` (``name`` in the message; ``earlier`` by default). The fields are validated
    in order, so ``earlier`` is known by then, unless it was wrong (already named)."""

    def check(cls: type, value: str | None, info: ValidationInfo) -> str | None:
        start = info.data.get(earlier)
        if value is not None and start is not None and value < start:
            raise ValueError(f"must not be before {name or earlier}")
        return value

    return field_validator(field)(check)


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

    _ends_after_start = _not_before("ends_at", "starts_at")


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


#: The fields a client may change.
_EDITABLE = ("title", "description", "topics", "starts_at", "ends_at", "place")
#: The fields of an event as the API shows it.
EVENT_FIELDS = ("id", *_EDITABLE, "created_at", "updated_at")


def apply_patch(current: Mapping[str, Any], patch: EventPatch) -> dict[str, Any]:
    """The editable fields that ``patch`` changes on ``current`` (empty when nothing
    changes). Raises :class:`Invalid` (422) when the result would not be a valid event."""
    sent = patch.model_dump(exclude_unset=True)
    merged = {name: current.get(name) for name in _EDITABLE}
    for name, value in sent.items():
        if name == "place":
            place = dict(current.get("place") or {})
            place.update(value)
            try:
                checked = PlaceIn.model_validate(place, strict=True)
            except ValidationError as exc:
                raise invalid_fields(exc, prefix="place") from None
            merged["place"] = _place_doc(checked.model_dump())
        elif name == "description":
            merged["description"] = value or ""
        else:
            merged[name] = value
    if merged["ends_at"] is not None and merged["ends_at"] < merged["starts_at"]:
        raise Invalid("must not be before starts_at", "ends_at")
    return {name: merged[name] for name in _EDITABLE if merged[name] != current.get(name)}


def invalid_fields(
    exc: ValidationError, *, prefix: str = "", unknown: str = "unknown field"
) -> InvalidMany:
    """pydantic's errors as one 422 naming every field (``prefix.`` before each location),
    fields the model does not know first (``unknown`` is their message)."""
    unknowns: list[Invalid] = []
    problems: list[Invalid] = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in ((prefix,) if prefix else ()) + err["loc"])
        if err["type"] == "extra_forbidden":
            unknowns.append(Invalid(unknown, field))
        else:
            problems.append(Invalid(err["msg"].removeprefix("Value error, "), field or "body"))
    return InvalidMany(sorted(unknowns, key=lambda p: p.field or "") + problems)


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


# -- who may change what ------------------------------------------------------------------------


def require_admin(claims: Claims) -> Claims:
    """``claims`` if they are an admin's: only admins manage events (403 for anyone else)."""
    if not claims.is_admin:
        raise Forbidden("Only admins manage events.")
    return claims


def require_if_match(if_match: frozenset[str] | None, current: Mapping[str, Any]) -> None:
    """412 unless ``If-Match`` holds for ``current`` (strong comparison, RFC 9110 13.1.1).

    ``if_match``: the strong entity tags the header lists (weak ones never match), ``*``
    included; None when the header was not sent (no precondition)."""
    if if_match is not None and "*" not in if_match and etag_of(current) not in if_match:
        raise event_changed()


def event_changed() -> PreconditionFailed:
    """The 412 of an ``If-Match`` that no longer names the event's version."""
    return PreconditionFailed("The event changed since that ETag was read; GET it again.")


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


#: Query parameters as Falcon parses them: a repeated parameter arrives as a list.
Params = Mapping[str, str | list[str]]
T = TypeVar("T")


def _given_once(convert: Callable[[str], T]) -> PlainValidator:
    """A query parameter that may be given at most once, made a value by ``convert``."""

    def check(value: object) -> T:
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("give this parameter at most once")
            value = value[0]
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return convert(value)

    return PlainValidator(check)


def _query_topics(value: object) -> tuple[str, ...]:
    """``topic``: repeatable, each may hold comma-separated topics; normalized, deduplicated."""
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(raw, str) for raw in values):
        raise ValueError("must be a string")
    topics = tuple(normalize_topics([part for raw in values for part in raw.split(",")]))
    if len(topics) > QUERY_TOPICS_MAX:
        raise ValueError(f"at most {QUERY_TOPICS_MAX} topics")
    return topics


def _query_time(raw: str) -> str:
    # "+01:00" in an unencoded query string arrives as " 01:00".
    return canonical_time(_SPACE_FOR_PLUS.sub(r"+\1", raw.strip()))


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("not a finite number")
    return value


def _point(raw: str) -> tuple[float, float]:
    try:
        lat, lng = (_finite(part) for part in raw.split(","))
    except ValueError:
        raise ValueError("must be lat,lng (two numbers)") from None
    if not -90 <= lat <= 90:
        raise ValueError("latitude must be in [-90, 90]")
    if not -180 <= lng <= 180:
        raise ValueError("longitude must be in [-180, 180]")
    return lat, lng


def _radius(raw: str) -> float:
    try:
        radius = _finite(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if not 0 < radius <= RADIUS_MAX_KM:
        raise ValueError(f"must be > 0 and <= {RADIUS_MAX_KM:g}")
    return radius


def _text_filter(raw: str) -> str | None:
    text = " ".join(raw.split()) or None
    if text and len(text) > Q_MAX:
        raise ValueError(f"must be at most {Q_MAX} characters")
    return text


def _sort(raw: str) -> str:
    sort = raw or "starts_at"
    if sort not in SORTS:
        raise ValueError("must be starts_at or distance")
    return sort


class SearchQuery(StrictModel):
    """The query parameters of ``GET /v1/events``, by their names in the query string.

    Decisions (documented in the OpenAPI file): unknown parameters are refused; ``topic``
    may repeat and may also hold comma-separated topics, any other parameter is given at
    most once; an empty ``q`` means no text filter; ``limit`` above 100 is clamped to 100,
    below 1 or not an integer is refused. Each parameter is checked even when another one
    is wrong, so one 422 names them all."""

    topic: Annotated[tuple[str, ...], PlainValidator(_query_topics)] = ()
    starts_from: Annotated[str | None, _given_once(_query_time)] = Field(None, alias="from")
    to: Annotated[str | None, _given_once(_query_time)] = None
    near: Annotated[tuple[float, float] | None, _given_once(_point)] = None
    radius_km: Annotated[float | None, _given_once(_radius)] = None
    q: Annotated[str | None, _given_once(_text_filter)] = None
    sort: Annotated[str, _given_once(_sort)] = "starts_at"
    limit: Annotated[int, _given_once(parse_limit)] = LIMIT_DEFAULT
    cursor: Annotated[str | None, _given_once(lambda raw: raw or None)] = None

    _to_after_from = _not_before("to", "starts_from", "from")

    @field_validator("radius_km", "sort")
    @classmethod
    def _needs_near(cls, value: object, info: ValidationInfo) -> object:
        # ``info.data`` has the fields before this one that were fine (None when not
        # given); a wrong ``near`` is missing there, and already named.
        if "near" in info.data and info.data["near"] is None:
            if info.field_name == "radius_km":
                raise ValueError("needs near")
            if value == "distance":
                raise ValueError("sort=distance needs near")
        return value

    def search(self) -> Search:
        """The search these parameters ask for."""
        return Search(
            topics=self.topic,
            starts_from=self.starts_from,
            starts_to=self.to,
            near=self.near,
            radius_km=RADIUS_DEFAULT_KM if self.radius_km is None else self.radius_km,
            text=self.q,
            sort=self.sort,
            limit=self.limit,
            cursor=self.cursor,
        )


#: The query parameters ``GET /v1/events`` takes.
SEARCH_PARAMETERS = frozenset(
    field.alias or name for name, field in SearchQuery.model_fields.items()
)


def parse_search(params: Params) -> Search:
    """The search of the query parameters of ``GET /v1/events`` (see :class:`SearchQuery`);
    :class:`InvalidMany` (422) names every parameter that is wrong."""
    try:
        search = SearchQuery.model_validate(dict(params)).search()
    except ValidationError as exc:
        raise invalid_fields(exc, unknown="unknown query parameter") from None
    if search.cursor is not None:
        # Checked here so a bad cursor is a 422 before any store work.
        decode_cursor(search.cursor, search)
    return search


def encode_cursor(search: Search, store_cursor: str) -> str:
    """The opaque cursor clients get: the store's, bound to the search it belongs to."""
    raw = json.dumps({"f": search.fingerprint(), "c": store_cursor}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def malformed_cursor() -> Invalid:
    """The 422 of a cursor that is not one of ours (or that the store cannot read)."""
    return Invalid("malformed cursor", "cursor")


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
        raise malformed_cursor() from None
    if fingerprint != search.fingerprint():
        raise Invalid("this cursor belongs to another search", "cursor")
    return inner
