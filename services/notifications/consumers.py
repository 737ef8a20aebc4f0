"""What the notifications service does with the messages it receives. Each handler is
idempotent: a redelivered or late message changes nothing more.

- ``email.sent`` / ``email.failed`` (outcomes of the dispatcher's jobs): the reminder whose
  correlation ``{notification_id, version}`` matches a ``sending`` reminder of that version
  becomes ``sent`` (``sent_at``, ``attempts``) or ``failed`` (``last_error``, ``attempts``).
  Anything else (already recorded, deleted, an older version) is ignored.
- ``event.updated``: every ``scheduled`` reminder of the event gets the fresh snapshot;
  ``before``-style ones move to start - ``before``. A copy older than the snapshot the reminder
  has (by the event's ``updated_at``) is ignored.
- ``event.deleted``: first a tombstone of the event is recorded in the store, then every
  ``scheduled`` reminder of the event becomes ``cancelled`` and, in the same store write, an
  ``event_cancelled`` email job to its address goes into the outbox (key
  ``event_cancelled:<reminder id>``). Reminders already ``sending`` are past recall.

  The tombstone closes a race: the events service may still have answered "the event exists"
  to a reminder being created while the deletion was handled. Creating a reminder inserts it
  and *then* reads the tombstone (:meth:`Reminders.create
  <services.notifications.service.Reminders.create>`); this handler writes the tombstone and
  *then* looks for scheduled reminders. Whatever the order, one of the two sees the other:
  either the scan finds the new reminder and cancels it here, or the creation finds the
  tombstone, cancels its reminder itself and answers 422 (no such event). The dispatcher
  reads tombstones too and cancels instead of sending (:func:`cancellation`).
- ``user.deleted``: every reminder of the user is deleted.

Payloads are read with their :mod:`eventpost.contracts` model; one that breaks its contract is
a :class:`PermanentError` (parked, never retried). What to change is decided by
:mod:`services.notifications.domain`. Writes are conditional on the version read (a
dispatcher's claim in between makes the write decide again on what is there now; a reminder
that keeps changing makes the message be retried), and every write releases a dispatcher's
lease, so the dispatcher re-claims the reminder as it is now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from eventpost import contracts
from eventpost.contracts import (
    EmailFailed,
    EmailSent,
    EventDeleted,
    EventUpdated,
    MalformedPayload,
    Payload,
    UserDeleted,
)
from eventpost.messaging import Envelope, PermanentError
from eventpost.storage import Store
from eventpost.timeutil import Clock, format_time, utcnow
from services.notifications import domain
from services.notifications.store import Decision, NotificationsStore

log = logging.getLogger(__name__)

_P = TypeVar("_P", bound=Payload)

#: Lost races on one reminder before the message is given back to be retried later.
_TRIES = 10

#: Queue names (after the worker's prefix, ``notifications``) and the routing keys bound to
#: each: the ``notifications.*`` entries of :data:`eventpost.contracts.SUBSCRIPTIONS`.
QUEUES: dict[str, tuple[str, ...]] = {
    name.removeprefix("notifications."): bindings
    for name, bindings in contracts.SUBSCRIPTIONS.items()
    if name.startswith("notifications.")
}


def _parse(model: type[_P], envelope: Envelope) -> _P:
    try:
        return model.parse(envelope.payload)
    except MalformedPayload as exc:
        raise PermanentError(str(exc)) from None


class NotificationHandlers:
    """The message handlers of the notifications service over its store."""

    def __init__(self, store: Store, *, clock: Clock = utcnow) -> None:
        self.store = NotificationsStore(store)
        self.clock = clock

    def handler_for(self, queue: str) -> Callable[[Envelope], None]:
        """The handler of one of :data:`QUEUES`."""
        return {
            "email-outcomes": self.on_email_outcome,
            "event-changes": self.on_event_change,
            "user-deleted": self.on_user_deleted,
        }[queue]

    # -- email outcomes ----------------------------------------------------------------------

    def on_email_outcome(self, envelope: Envelope) -> None:
        """``email.sent`` / ``email.failed``: record the outcome on the reminder."""
        outcome: EmailSent | EmailFailed
        if envelope.type == contracts.EMAIL_SENT:
            outcome = _parse(EmailSent, envelope)
        elif envelope.type == contracts.EMAIL_FAILED:
            outcome = _parse(EmailFailed, envelope)
        else:
            raise PermanentError(f"not an email outcome: {envelope.type}")
        correlation = outcome.correlation
        if "notification_id" not in correlation:
            return  # an outcome of a job that is not a reminder
        reminder_id = correlation.get("notification_id")
        version = correlation.get("version")
        if not isinstance(reminder_id, str) or not isinstance(version, int):
            raise PermanentError(f"malformed correlation {correlation!r}")
        now = self.clock()

        def decide(doc: dict[str, Any] | None) -> Decision:
            changes = domain.record_outcome(
                doc, outcome, version=version, now=now, reported_at=envelope.occurred_at
            )
            return None if changes is None else (changes, ())

        written = self.store.change(reminder_id, decide, tries=_TRIES)
        if written is None:
            log.info(
                "outcome already recorded or for another version; ignored",
                extra={"notification_id": reminder_id, "version": version},
            )
            return
        stored, _ = written
        log.info(
            "reminder %s",
            stored["status"],
            extra={"notification_id": reminder_id, "attempts": stored["attempts"]},
        )

    # -- event changes -----------------------------------------------------------------------

    def on_event_change(self, envelope: Envelope) -> None:
        """``event.updated`` / ``event.deleted``."""
        if envelope.type == contracts.EVENT_UPDATED:
            event = _parse(EventUpdated, envelope).event
            if not isinstance(event.get("id"), str):
                raise PermanentError("event.updated without an event")
            self.follow_event(event)
        elif envelope.type == contracts.EVENT_DELETED:
            deleted = _parse(EventDeleted, envelope)
            self.cancel_event(
                deleted.event_id,
                deleted.event,
                envelope.request_id,
                deleted_at=envelope.occurred_at,
            )
        else:
            raise PermanentError(f"not an event change: {envelope.type}")

    def follow_event(self, event: Mapping[str, Any]) -> int:
        """Move and refresh the event's scheduled reminders; returns how many changed."""
        try:
            domain.event_snapshot(event)
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"event.updated with an unusable event: {exc!r}") from None
        now = self.clock()

        def decide(doc: dict[str, Any] | None) -> Decision:
            changes = domain.follow_event(doc, event, now) if doc is not None else None
            return None if changes is None else (changes, ())

        changed = 0
        for reminder_id in self.store.scheduled_ids_of(event["id"]):
            written = self.store.change(reminder_id, decide, tries=_TRIES)
            if written is None:
                continue
            changed += 1
            if "send_at" in written[1]:
                log.info(
                    "reminder follows its event",
                    extra={"notification_id": reminder_id, "send_at": written[1]["send_at"]},
                )
        return changed

    def cancel_event(
        self,
        event_id: str,
        event: Mapping[str, Any] | None,
        request_id: str | None,
        *,
        deleted_at: str | None = None,
    ) -> int:
        """Record the event's tombstone, then cancel its scheduled reminders and queue an
        email to each owner; returns how many were cancelled."""
        # The tombstone first: a reminder inserted after the scan below finds it.
        self.store.record_tombstone(event_id, deleted_at or format_time(self.clock()))
        decide = cancellation(event, request_id, self.clock)
        cancelled = 0
        for reminder_id in self.store.scheduled_ids_of(event_id):
            if self.store.change(reminder_id, decide, tries=_TRIES) is not None:
                cancelled += 1
                log.info("reminder cancelled", extra={"notification_id": reminder_id})
        return cancelled

    # -- users -------------------------------------------------------------------------------

    def on_user_deleted(self, envelope: Envelope) -> None:
        """``user.deleted``: delete every reminder of the user."""
        user_id = _parse(UserDeleted, envelope).user_id
        if not user_id:
            raise PermanentError("user.deleted without a user_id")
        removed = self.store.delete_owned_by(user_id)
        log.info("reminders of a deleted user removed", extra={"count": removed})


def cancellation(
    event: Mapping[str, Any] | None, request_id: str | None, clock: Clock
) -> Callable[[dict[str, Any] | None], Decision]:
    """The decision that cancels a scheduled reminder of a deleted event and queues the
    ``event_cancelled`` email to its owner in the same write (``event``: the deleted event's
    JSON when known); nothing for a reminder gone or past ``scheduled``."""

    def decide(doc: dict[str, Any] | None) -> Decision:
        changes = domain.cancelled(doc, now=clock())
        if doc is None or changes is None:
            return None
        mail = domain.cancelled_job(doc, event).envelope(request_id, clock=clock)
        return changes, [mail.to_dict()]

    return decide
