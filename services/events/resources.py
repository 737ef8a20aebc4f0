"""The events service's HTTP resources (public paths, as API.md gives them): they read the
request, call :class:`services.events.service.EventsService` and write the answer."""

from __future__ import annotations

import falcon
from falcon.uri import parse_query_string

from eventpost.auth import Claims, Verifier, authenticate
from eventpost.validation import parse_body
from services.events.domain import (
    EventIn,
    EventPatch,
    etag_of,
    parse_search,
    require_admin,
    to_public,
)
from services.events.ics import event_calendar
from services.events.service import CachedEvent, EventsService, IfMatch

JSON = "application/json"
CALENDAR = "text/calendar; charset=utf-8"
# Clients and shared caches must revalidate before reusing an answer (ETag makes that cheap),
# so nobody is served an event older than a write they made.
CACHE_CONTROL = "no-cache"


def if_match_of(req: falcon.Request) -> IfMatch:
    """The strong entity tags of ``If-Match`` (``*`` included; weak ones can never match),
    or None when the header was not sent."""
    tags = req.if_match
    if tags is None:
        return None
    return frozenset(str(tag) for tag in tags if tag == "*" or not tag.is_weak)


class EventsEndpoint:
    """What both events resources hold: the use cases, the token verifier and the body
    size limit."""

    def __init__(self, service: EventsService, verifier: Verifier, max_body_bytes: int) -> None:
        self.service = service
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes

    def admin(self, req: falcon.Request) -> Claims:
        """The caller's claims: 401 without a valid token, 403 unless an admin."""
        return require_admin(authenticate(req, self.verifier))

    def event(self, resp: falcon.Response, event_id: str) -> CachedEvent:
        """The event (404 when none), its ETag and cache policy already on ``resp``."""
        found = self.service.get(event_id)
        resp.etag = found.etag
        resp.cache_control = [CACHE_CONTROL]
        return found

    @staticmethod
    def saved(resp: falcon.Response, doc: dict) -> None:
        """Answer with a stored event and its ETag."""
        resp.etag = etag_of(doc)
        resp.media = to_public(doc)


class EventsResource(EventsEndpoint):
    """``/v1/events``: search (anyone) and create (admins)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = parse_query_string(req.query_string, keep_blank=True, csv=False)
        resp.text = self.service.search(parse_search(params))
        resp.content_type = JSON
        resp.cache_control = [CACHE_CONTROL]

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        claims = self.admin(req)
        body = parse_body(req, EventIn, self.max_body_bytes)
        saved = self.service.create(body, by=claims.sub, request_id=req.context.request_id)
        resp.status = falcon.HTTP_201
        resp.location = f"/v1/events/{saved['id']}"
        self.saved(resp, saved)


class EventResource(EventsEndpoint):
    """``/v1/events/{event_id}`` (read: anyone; edit, delete: admins) and
    ``/v1/events/{event_id}.ics``."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, event_id: str) -> None:
        found = self.event(resp, event_id)
        tags = req.if_none_match
        if tags and any(tag == "*" or tag == found.etag for tag in tags):
            resp.status = falcon.HTTP_304
            return
        resp.text = found.text
        resp.content_type = JSON

    def on_get_ics(self, req: falcon.Request, resp: falcon.Response, event_id: str) -> None:
        found = self.event(resp, event_id)
        resp.content_type = CALENDAR
        resp.set_header("Content-Disposition", f'inline; filename="event-{event_id}.ics"')
        resp.data = event_calendar(found.public, found.version)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, event_id: str) -> None:
        claims = self.admin(req)
        patch = parse_body(req, EventPatch, self.max_body_bytes)
        saved = self.service.patch(
            event_id,
            patch,
            if_match=if_match_of(req),
            by=claims.sub,
            request_id=req.context.request_id,
        )
        self.saved(resp, saved)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, event_id: str) -> None:
        claims = self.admin(req)
        self.service.delete(
            event_id, if_match=if_match_of(req), by=claims.sub, request_id=req.context.request_id
        )
        resp.status = falcon.HTTP_204
