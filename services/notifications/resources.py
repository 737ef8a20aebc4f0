"""HTTP resources of the notifications service: ``/v1/notifications`` and its items.

Every method needs a valid access token; a user sees and changes only their own reminders
(another user's answers 404, exactly like a missing one, for every method).

Choices where API.md is silent:

- PATCH takes at most one of ``send_at``, ``before`` and ``delay`` (422 otherwise). ``send_at``
  makes a reminder absolute; ``before`` makes it follow its event again (the event is fetched
  fresh); ``delay`` moves ``send_at`` and, on a ``before``-style reminder, shortens ``before``
  by as much (so it keeps following its event) unless that would put it after the event's
  start, where it becomes absolute. ``subject: null`` / ``email: null`` go back to the
  defaults, ``message: null`` clears the note. An empty PATCH changes nothing.
- DELETE works in every status. A reminder deleted while a dispatcher holds a claim on it is
  not sent (the dispatcher's conditional write finds it gone). A ``sending`` reminder's email
  job is already with the email-sender and may still be delivered: deleting it only forgets
  it (its outcome is then ignored).
- 503 (with ``Retry-After``) when the users or events service cannot be asked; nothing is
  stored then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import falcon
from pydantic import Field

from eventpost.auth import Claims, authenticate
from eventpost.problems import ValidationProblem, field_error
from eventpost.storage import Collection, InvalidCursor, NotFound, VersionConflict
from eventpost.timeutil import Clock, format_time, parse_rfc3339
from eventpost.validation import StrictModel, fields_set, parse_body, parse_limit
from services.notifications import domain
from services.notifications.clients import UnknownEvent, Upstreams
from services.notifications.store import get_owned, list_owned

log = logging.getLogger(__name__)

_PATCH_RETRIES = 5
#: The query parameters of ``GET /v1/notifications``; any other is a 422.
LIST_PARAMETERS = frozenset({"status", "event_id", "limit", "cursor"})


class CreateNotification(StrictModel):
    """``POST /v1/notifications``: exactly one of ``send_at`` and ``before``."""

    event_id: str = Field(min_length=1, max_length=128)
    send_at: str | None = Field(default=None, max_length=64)
    before: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=254)
    subject: str | None = Field(default=None, max_length=domain.SUBJECT_MAX)
    message: str | None = Field(default=None, max_length=domain.MESSAGE_MAX)


class PatchNotification(StrictModel):
    """``PATCH /v1/notifications/{id}``: any of these; at most one of the three times."""

    send_at: str | None = Field(default=None, max_length=64)
    before: str | None = Field(default=None, max_length=64)
    delay: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=254)
    subject: str | None = Field(default=None, max_length=domain.SUBJECT_MAX)
    message: str | None = Field(default=None, max_length=domain.MESSAGE_MAX)


def _time(value: str, field: str) -> str:
    try:
        return format_time(parse_rfc3339(value))
    except ValueError:
        raise field_error(
            field, "must be an RFC 3339 time with an offset, e.g. 2026-12-01T20:00:00+01:00"
        ) from None


def _duration(value: str, field: str) -> timedelta:
    try:
        return domain.parse_duration(value, field)
    except domain.RuleError as exc:
        raise field_error(exc.field, exc.message) from None


def _rule(exc: domain.RuleError) -> ValidationProblem:
    return field_error(exc.field, exc.message)


def _conflict(status: str) -> falcon.HTTPConflict:
    return falcon.HTTPConflict(
        title="Conflict",
        description=f"The reminder is {status}; only a scheduled reminder can be changed.",
    )


def _not_found() -> falcon.HTTPNotFound:
    return falcon.HTTPNotFound(title="Not Found", description="No such notification.")


class _Base:
    def __init__(
        self,
        coll: Collection,
        verifier: Any,
        upstreams: Upstreams,
        clock: Clock,
        max_body_bytes: int,
    ) -> None:
        self.coll = coll
        self.verifier = verifier
        self.upstreams = upstreams
        self.clock = clock
        self.max_body_bytes = max_body_bytes

    def _caller(self, req: falcon.Request) -> Claims:
        return authenticate(req, self.verifier)

    def _event(self, event_id: str, req: falcon.Request) -> dict[str, Any]:
        try:
            return self.upstreams.get_event(event_id, request_id=req.context.request_id)
        except UnknownEvent:
            raise field_error("event_id", "no such event") from None

    def _me(self, req: falcon.Request) -> dict[str, Any]:
        return self.upstreams.get_me(
            req.get_header("Authorization") or "", request_id=req.context.request_id
        )


class NotificationsResource(_Base):
    """``/v1/notifications``: create a reminder, list one's own."""

    def __init__(self, *args: Any, id_factory: Callable[[], str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.id_factory = id_factory

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        claims = self._caller(req)
        body = parse_body(req, CreateNotification, self.max_body_bytes)
        if (body.send_at is None) == (body.before is None):
            raise ValidationProblem(
                [
                    {"field": "send_at", "message": "give exactly one of send_at and before"},
                    {"field": "before", "message": "give exactly one of send_at and before"},
                ],
                detail="Give exactly one of send_at and before.",
            )
        send_at = _time(body.send_at, "send_at") if body.send_at is not None else None
        before = _duration(body.before, "before") if body.before is not None else None
        try:
            domain.check_text("subject", body.subject, domain.SUBJECT_MAX, single_line=True)
            domain.check_text("message", body.message, domain.MESSAGE_MAX, single_line=False)
        except domain.RuleError as exc:
            raise _rule(exc) from None
        event = self._event(body.event_id, req)
        user = self._me(req)
        try:
            doc = domain.new_reminder(
                reminder_id=self.id_factory(),
                owner=claims.sub,
                event_id=body.event_id,
                event=event,
                user=user,
                send_at=send_at,
                before=before,
                email=body.email,
                subject=body.subject,
                message=body.message,
                now=self.clock(),
                request_id=req.context.request_id,
            )
        except domain.RuleError as exc:
            raise _rule(exc) from None
        stored = self.coll.insert(doc)
        log.info(
            "reminder %s set for %s",
            stored["id"],
            stored["send_at"],
            extra={"notification_id": stored["id"], "event_id": stored["event_id"]},
        )
        resp.status = falcon.HTTP_201
        resp.location = f"/v1/notifications/{stored['id']}"
        resp.media = domain.public_view(stored)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        claims = self._caller(req)
        unknown = sorted(set(req.params) - LIST_PARAMETERS)
        if unknown:  # as events and users do: a typo must not silently widen the list
            raise ValidationProblem(
                [{"field": name, "message": "unknown query parameter"} for name in unknown]
            )
        status = _single(req, "status")
        if status is not None and status not in domain.STATUSES:
            raise field_error("status", "must be one of " + ", ".join(domain.STATUSES))
        event_id = _single(req, "event_id")
        if event_id is not None and not 1 <= len(event_id) <= 128:
            raise field_error("event_id", "must be 1 to 128 characters")
        try:
            limit = parse_limit(_single(req, "limit"))
        except ValueError as exc:
            raise field_error("limit", str(exc)) from None
        cursor = _single(req, "cursor")
        try:
            page = list_owned(
                self.coll, claims.sub, status=status, event_id=event_id, limit=limit, cursor=cursor
            )
        except InvalidCursor:
            raise field_error("cursor", "not a cursor of this list") from None
        resp.media = {
            "items": [domain.public_view(d) for d in page.items],
            "next_cursor": page.next_cursor,
        }


class NotificationResource(_Base):
    """``/v1/notifications/{notification_id}``: the owner's view of one reminder."""

    def _owned(self, req: falcon.Request, notification_id: str) -> tuple[Claims, dict[str, Any]]:
        claims = self._caller(req)
        doc = get_owned(self.coll, notification_id, claims.sub)
        if doc is None:
            raise _not_found()
        return claims, doc

    def on_get(self, req: falcon.Request, resp: falcon.Response, notification_id: str) -> None:
        _, doc = self._owned(req, notification_id)
        resp.media = domain.public_view(doc)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, notification_id: str) -> None:
        claims, doc = self._owned(req, notification_id)
        sent = fields_set(parse_body(req, PatchNotification, self.max_body_bytes))
        patch: dict[str, Any] = dict(sent)
        for name in ("send_at", "before", "delay"):
            if name in patch and patch[name] is None:
                raise field_error(name, "must not be null")
        if "send_at" in patch:
            patch["send_at"] = _time(patch["send_at"], "send_at")
        for name in ("before", "delay"):
            if name in patch:
                patch[name] = _duration(patch[name], name)
        if doc["status"] != domain.SCHEDULED:
            raise _conflict(doc["status"])
        if not patch:
            resp.media = domain.public_view(doc)
            return
        event = self._event(doc["event_id"], req) if "before" in patch else None
        user = self._me(req) if "email" in patch else None
        for _ in range(_PATCH_RETRIES):
            try:
                changes = domain.reminder_changes(
                    doc,
                    patch,
                    now=self.clock(),
                    event=event,
                    user=user,
                    request_id=req.context.request_id,
                )
            except domain.NotChangeable as exc:
                raise _conflict(exc.status) from None
            except domain.RuleError as exc:
                raise _rule(exc) from None
            try:
                doc = self.coll.update(doc["id"], changes, expected_version=doc["version"])
                break
            except VersionConflict:
                # A dispatcher claimed it or a consumer moved it meanwhile: decide again on
                # what is there now.
                fresh = get_owned(self.coll, notification_id, claims.sub)
                if fresh is None:
                    raise _not_found() from None
                doc = fresh
            except NotFound:
                raise _not_found() from None
        else:
            raise falcon.HTTPConflict(
                title="Conflict", description="The reminder kept changing; try again."
            )
        resp.media = domain.public_view(doc)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, notification_id: str) -> None:
        _, doc = self._owned(req, notification_id)
        # Any status may be deleted. A dispatcher holding a claim on it then finds nothing
        # to mark and sends nothing; a ``sending`` reminder's job is already with the
        # email-sender and may still be delivered.
        self.coll.delete(doc["id"])
        resp.status = falcon.HTTP_204


def _single(req: falcon.Request, name: str) -> str | None:
    values = req.get_param_as_list(name)
    if not values:
        return None
    if len(values) > 1:
        raise field_error(name, "give it at most once")
    return values[0]
