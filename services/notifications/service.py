"""The notifications service's use cases: set, list, read, change and delete one's reminders.

Every use case acts for a :class:`Caller` and sees only the caller's own reminders (another
user's looks exactly like a missing one: 404). Errors are :mod:`eventpost.errors`.

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
- A reminder created while its event's ``event.deleted`` is being handled (the events service
  still answered with the event) is cancelled all the same: after the insert, the event's
  tombstone is read (see :mod:`services.notifications.consumers`). Found: the reminder is
  cancelled here (no email: the caller is answered) and the answer is 422, as for an unknown
  event. Not found yet: the consumer's scan, which comes after its tombstone, finds the
  reminder and cancels it, telling the owner by email.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eventpost.errors import Invalid, Missing
from eventpost.ids import new_id
from eventpost.storage import InvalidCursor, Page
from eventpost.timeutil import Clock, utcnow
from services.notifications import domain
from services.notifications.clients import UnknownEvent, Upstreams
from services.notifications.store import Decision, NotificationsStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who asks: the token's subject, the ``Authorization`` header to forward to the users
    service, and the request's ID."""

    user_id: str
    authorization: str
    request_id: str | None


class Reminders:
    """The use cases over the reminders of :class:`NotificationsStore`; ``upstreams`` answers
    what the events and users services know."""

    def __init__(
        self,
        store: NotificationsStore,
        upstreams: Upstreams,
        *,
        clock: Clock = utcnow,
        id_factory: Callable[[], str] = new_id,
    ) -> None:
        self.store = store
        self.upstreams = upstreams
        self.clock = clock
        self.id_factory = id_factory

    def create(
        self,
        caller: Caller,
        *,
        event_id: str,
        send_at: str | None,
        before: str | None,
        email: str | None,
        subject: str | None,
        message: str | None,
    ) -> dict[str, Any]:
        """Set a reminder about ``event_id`` at ``send_at`` (RFC 3339) or ``before`` (an ISO
        8601 duration) its start; returns it as stored."""
        domain.require_one_time(send_at, before)
        at = domain.parse_send_at(send_at, "send_at") if send_at is not None else None
        ahead = domain.parse_duration(before, "before") if before is not None else None
        domain.check_text("subject", subject, domain.SUBJECT_MAX, single_line=True)
        domain.check_text("message", message, domain.MESSAGE_MAX, single_line=False)
        event = self._event(event_id, caller)
        user = self._me(caller)
        doc = domain.new_reminder(
            reminder_id=self.id_factory(),
            owner=caller.user_id,
            event_id=event_id,
            event=event,
            user=user,
            send_at=at,
            before=ahead,
            email=email,
            subject=subject,
            message=message,
            now=self.clock(),
            request_id=caller.request_id,
        )
        stored = self.store.insert(doc)
        # After the insert, never before: see the module docstring.
        if self.store.tombstone_of(event_id) is not None:
            self._withdraw(stored)
            raise Invalid("no such event", "event_id")
        log.info(
            "reminder %s set for %s",
            stored["id"],
            stored["send_at"],
            extra={"notification_id": stored["id"], "event_id": stored["event_id"]},
        )
        return stored

    def list_for(
        self,
        caller: Caller,
        *,
        status: str | None,
        event_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> Page:
        """A page of the caller's reminders, soonest first, of one status and/or event."""
        try:
            return self.store.list_owned(
                caller.user_id, status=status, event_id=event_id, limit=limit, cursor=cursor
            )
        except InvalidCursor:
            raise Invalid("not a cursor of this list", "cursor") from None

    def get(self, caller: Caller, reminder_id: str) -> dict[str, Any]:
        """One of the caller's reminders (:class:`Missing` for anybody else's)."""
        doc = self.store.get_owned(reminder_id, caller.user_id)
        if doc is None:
            raise _missing()
        return doc

    def change(
        self, caller: Caller, current: Mapping[str, Any], sent: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Apply the fields of a PATCH (``sent``: only those the client sent) to ``current``,
        the caller's reminder as :meth:`get` returned it; returns it as stored."""
        patch = domain.parse_patch(sent)
        domain.require_changeable(current)
        if not patch:
            return dict(current)
        event = self._event(current["event_id"], caller) if "before" in patch else None
        user = self._me(caller) if "email" in patch else None

        def decide(doc: dict[str, Any] | None) -> Decision:
            if doc is None:  # deleted meanwhile
                raise _missing()
            changes = domain.reminder_changes(
                doc, patch, now=self.clock(), event=event, user=user, request_id=caller.request_id
            )
            return changes, ()

        written = self.store.change(current["id"], decide, current=dict(current))
        if written is None:
            raise _missing()
        return written[0]

    def delete(self, caller: Caller, reminder_id: str) -> None:
        """Forget one of the caller's reminders, whatever its status. A dispatcher holding a
        claim on it then finds nothing to mark and sends nothing; a ``sending`` reminder's job
        is already with the email-sender and may still be delivered."""
        self.store.delete(self.get(caller, reminder_id)["id"])

    def _withdraw(self, stored: dict[str, Any]) -> None:
        """Cancel a reminder just inserted for an event found deleted (unless the
        ``event.deleted`` consumer already did)."""

        def decide(doc: dict[str, Any] | None) -> Decision:
            changes = domain.cancelled(doc, now=self.clock())
            return None if changes is None else (changes, ())

        self.store.change(stored["id"], decide, current=stored)
        log.info(
            "reminder withdrawn: its event was deleted meanwhile",
            extra={"notification_id": stored["id"], "event_id": stored["event_id"]},
        )

    def _event(self, event_id: str, caller: Caller) -> dict[str, Any]:
        try:
            return self.upstreams.get_event(event_id, request_id=caller.request_id)
        except UnknownEvent:
            raise Invalid("no such event", "event_id") from None

    def _me(self, caller: Caller) -> dict[str, Any]:
        return self.upstreams.get_me(caller.authorization, request_id=caller.request_id)


def _missing() -> Missing:
    return Missing("No such notification.")
