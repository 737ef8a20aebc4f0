"""HTTP resources of the notifications service: ``/v1/notifications`` and its items.

Every method needs a valid access token; the use cases (and the choices where API.md is
silent) are in :mod:`services.notifications.service`. Errors are :mod:`eventpost.errors`,
rendered by the web edge.
"""

from __future__ import annotations

import falcon
from pydantic import Field

from eventpost.auth import Verifier, authenticate
from eventpost.errors import Invalid, InvalidMany
from eventpost.validation import StrictModel, fields_set, parse_body, parse_limit
from services.notifications import domain
from services.notifications.service import Caller, Reminders

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


class ReminderResource:
    """What the notifications resources share: the use cases, the caller of a request."""

    def __init__(self, reminders: Reminders, verifier: Verifier, max_body_bytes: int) -> None:
        self.reminders = reminders
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes

    def _caller(self, req: falcon.Request) -> Caller:
        claims = authenticate(req, self.verifier)
        return Caller(
            user_id=claims.sub,
            authorization=req.get_header("Authorization") or "",
            request_id=req.context.request_id,
        )


class NotificationsResource(ReminderResource):
    """``/v1/notifications``: create a reminder, list one's own."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        caller = self._caller(req)
        body = parse_body(req, CreateNotification, self.max_body_bytes)
        stored = self.reminders.create(caller, **body.model_dump())
        resp.status = falcon.HTTP_201
        resp.location = f"/v1/notifications/{stored['id']}"
        resp.media = domain.public_view(stored)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        caller = self._caller(req)
        unknown = sorted(set(req.params) - LIST_PARAMETERS)
        if unknown:  # as events and users do: a typo must not silently widen the list
            raise InvalidMany(
                [Invalid("unknown query parameter", name) for name in unknown],
                detail="The request did not pass validation.",
            )
        status = _single(req, "status")
        if status is not None and status not in domain.STATUSES:
            raise Invalid("must be one of " + ", ".join(domain.STATUSES), "status")
        event_id = _single(req, "event_id")
        if event_id is not None and not 1 <= len(event_id) <= 128:
            raise Invalid("must be 1 to 128 characters", "event_id")
        try:
            limit = parse_limit(_single(req, "limit"))
        except ValueError as exc:
            raise Invalid(str(exc), "limit") from None
        page = self.reminders.list_for(
            caller, status=status, event_id=event_id, limit=limit, cursor=_single(req, "cursor")
        )
        resp.media = {
            "items": [domain.public_view(d) for d in page.items],
            "next_cursor": page.next_cursor,
        }


class NotificationResource(ReminderResource):
    """``/v1/notifications/{notification_id}``: the owner's view of one reminder."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, notification_id: str) -> None:
        doc = self.reminders.get(self._caller(req), notification_id)
        resp.media = domain.public_view(doc)

    def on_patch(self, req: falcon.Request, resp: falcon.Response, notification_id: str) -> None:
        caller = self._caller(req)
        current = self.reminders.get(caller, notification_id)  # 404 before the body is read
        sent = fields_set(parse_body(req, PatchNotification, self.max_body_bytes))
        resp.media = domain.public_view(self.reminders.change(caller, current, sent))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, notification_id: str) -> None:
        self.reminders.delete(self._caller(req), notification_id)
        resp.status = falcon.HTTP_204


def _single(req: falcon.Request, name: str) -> str | None:
    values = req.get_param_as_list(name)
    if not values:
        return None
    if len(values) > 1:
        raise Invalid("give it at most once", name)
    return values[0]
