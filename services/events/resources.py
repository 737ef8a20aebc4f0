"""The events service's HTTP resources (public paths, as API.md gives them)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import falcon
from falcon.uri import parse_query_string

from eventpost.auth import Claims, authenticate
from eventpost.contracts import EVENT_CREATED, EVENT_DELETED, EVENT_UPDATED
from eventpost.messaging.envelope import Envelope
from eventpost.problems import field_error
from eventpost.settings import Settings
from eventpost.storage import InvalidCursor, NotFound, VersionConflict
from eventpost.timeutil import Clock
from eventpost.validation import parse_body
from eventpost.web import dumps
from services.events.cache import StampedCache
from services.events.domain import (
    EventIn,
    EventPatch,
    Search,
    apply_patch,
    decode_cursor,
    encode_cursor,
    etag_of,
    new_event,
    next_updated_at,
    parse_search,
    to_public,
)
from services.events.ics import event_calendar
from services.events.store import EventRepository

log = logging.getLogger("services.events")

JSON = "application/json"
CALENDAR = "text/calendar; charset=utf-8"
# Clients and shared caches must revalidate before reusing an answer (ETag makes that cheap),
# so nobody is served an event older than a write they made.
CACHE_CONTROL = "no-cache"
_PATCH_TRIES = 5


class CachedEvent(NamedTuple):
    """What the read cache keeps of one event."""

    public: dict[str, Any]
    text: str
    etag: str
    version: int


def require_admin(req: falcon.Request, verifier: Any) -> Claims:
    """The caller's claims if the bearer token is valid and the caller is an admin: 401
    without a valid token, 403 for anyone else."""
    claims = authenticate(req, verifier)
    if not claims.is_admin:
        raise falcon.HTTPForbidden(title="Forbidden", description="Only admins manage events.")
    return claims


def _not_found() -> falcon.HTTPNotFound:
    return falcon.HTTPNotFound(title="Not Found", description="No event with that id.")


def _precondition_failed() -> falcon.HTTPPreconditionFailed:
    return falcon.HTTPPreconditionFailed(
        title="Precondition Failed",
        description="The event changed since that ETag was read; GET it again.",
    )


def _if_match_ok(req: falcon.Request, doc: dict[str, Any]) -> bool:
    """``If-Match`` (strong comparison, RFC 9110 13.1.1) holds, or was not sent."""
    tags = req.if_match
    if tags is None:
        return True
    current = etag_of(doc)
    return any(tag == "*" or (tag == current and not tag.is_weak) for tag in tags)


class _Base:
    def __init__(
        self,
        repo: EventRepository,
        cache: StampedCache,
        verifier: Any,
        settings: Settings,
        clock: Clock,
        id_factory: Callable[[], str],
    ) -> None:
        self.repo = repo
        self.cache = cache
        self.verifier = verifier
        self.settings = settings
        self.clock = clock
        self.id_factory = id_factory

    def _envelope(self, req: falcon.Request, type_: str, payload: dict[str, Any]) -> dict:
        return Envelope.new(
            type_, payload, request_id=req.context.request_id, clock=self.clock
        ).to_dict()

    def _cached_event(self, event_id: str) -> CachedEvent | None:
        """An event through the read cache, or None."""

        def load() -> CachedEvent | None:
            doc = self.repo.get(event_id)
            if doc is None:
                return None
            public = to_public(doc)
            return CachedEvent(public, dumps(public), etag_of(doc), int(doc["version"]))

        return self.cache.get_or_compute(self.repo.stamp(), ("event", event_id), load)


class EventsResource(_Base):
    """``/v1/events``: search (anyone) and create (admins)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = parse_query_string(req.query_string, keep_blank=True, csv=False)
        search = parse_search(params)
        resp.text = self.cache.get_or_compute(
            self.repo.stamp(), ("search", search), lambda: self._search(search)
        )
        resp.content_type = JSON
        resp.cache_control = [CACHE_CONTROL]

    def _search(self, search: Search) -> str:
        inner = decode_cursor(search.cursor, search) if search.cursor else None
        try:
            page = self.repo.search(search, inner)
        except InvalidCursor:
            raise field_error("cursor", "malformed cursor") from None
        items = [to_public(doc) for doc in page.items]
        next_cursor = encode_cursor(search, page.next_cursor) if page.next_cursor else None
        return dumps({"items": items, "next_cursor": next_cursor})

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        claims = require_admin(req, self.verifier)
        body = parse_body(req, EventIn, self.settings.max_body_bytes)
        doc = new_event(body, self.id_factory(), self.clock())
        public = to_public(doc)
        saved = self.repo.insert(
            doc, events=[self._envelope(req, EVENT_CREATED, {"event": public})]
        )
        log.info("event created", extra={"event_id": doc["id"], "by": claims.sub})
        resp.status = falcon.HTTP_201
        resp.location = f"/v1/events/{doc['id']}"
        resp.etag = etag_of(saved)
        resp.media = public


class EventResource(_Base):
    """``/v1/events/{event_id}`` (read: anyone; edit, delete: admins) and
    ``/v1/events/{event_id}.ics``."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, event_id: str) -> None:
        found = self._cached_event(event_id)
        if found is None:
            raise _not_found()
        resp.etag = found.etag
        resp.cache_control = [CACHE_CONTROL]
        tags = req.if_none_match
        if tags and any(tag == "*" or tag == found.etag for tag in tags):
            resp.status = falcon.HTTP_304
            return
        resp.text = found.text
        resp.content_type = JSON

    def on_get_ics(self, req: falcon.Request, resp: falcon.Response, event_id: str) -> None:
        found = self._cached_event(event_id)
        if found is None:
            raise _not_found()
        resp.etag = found.etag
        resp.cache_control = [CACHE_CONTROL]
        resp.content_type = CALENDAR
        resp.set_header("Content-Disposition", f'inline; filename="event-{event_id}.ics"')
        resp.data = event_calendar(found.public, found.version)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, event_id: str) -> None:
        claims = require_admin(req, self.verifier)
        patch = parse_body(req, EventPatch, self.settings.max_body_bytes)
        for _ in range(_PATCH_TRIES):
            current = self.repo.get(event_id)
            if current is None:
                raise _not_found()
            if not _if_match_ok(req, current):
                raise _precondition_failed()
            changes = apply_patch(current, patch)
            if not changes:
                # Nothing to change: no write, no event.updated.
                saved = current
                break
            changes["updated_at"] = next_updated_at(current, self.clock())
            after = to_public({**current, **changes})
            payload = {"event": after, "old_starts_at": current["starts_at"]}
            try:
                saved = self.repo.update(
                    event_id,
                    changes,
                    expected_version=int(current["version"]),
                    events=[self._envelope(req, EVENT_UPDATED, payload)],
                )
            except NotFound:
                raise _not_found() from None
            except VersionConflict:
                if req.if_match is not None:
                    raise _precondition_failed() from None
                continue  # someone else wrote in between: merge again on the newer version
            log.info(
                "event updated",
                extra={"event_id": event_id, "by": claims.sub, "fields": sorted(changes)},
            )
            break
        else:
            raise falcon.HTTPConflict(
                title="Conflict", description="The event kept changing; try again."
            )
        resp.etag = etag_of(saved)
        resp.media = to_public(saved)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, event_id: str) -> None:
        claims = require_admin(req, self.verifier)
        for _ in range(_PATCH_TRIES):
            current = self.repo.get(event_id)
            if current is None:
                raise _not_found()
            if not _if_match_ok(req, current):
                raise _precondition_failed()
            payload = {"event_id": event_id, "event": to_public(current)}
            try:
                gone = self.repo.delete(
                    event_id,
                    expected_version=int(current["version"]),
                    events=[self._envelope(req, EVENT_DELETED, payload)],
                )
            except VersionConflict:
                if req.if_match is not None:
                    raise _precondition_failed() from None
                continue
            if not gone:
                raise _not_found()
            log.info("event deleted", extra={"event_id": event_id, "by": claims.sub})
            resp.status = falcon.HTTP_204
            return
        raise falcon.HTTPConflict(title="Conflict", description="The event kept changing.")
