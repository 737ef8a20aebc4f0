"""What the notifications service does with the messages it receives. Each handler is
idempotent: a redelivered or late message changes nothing more.

- ``email.sent`` / ``email.failed`` (outcomes of the dispatcher's jobs): the reminder whose
  correlation ``{notification_id, version}`` matches a ``sending`` reminder of that version
  becomes ``sent`` (``sent_at``, ``attempts``) or ``failed`` (``last_error``, ``attempts``).
  Anything else (already recorded, deleted, an older version) is ignored.
- ``event.updated``: every ``scheduled`` reminder of the event gets the fresh snapshot;
  ``before``-style ones move to start - ``before``. A copy older than the snapshot the reminder
  has (by the event's ``updated_at``) is ignored.
- ``event.deleted``: every ``scheduled`` reminder of the event becomes ``cancelled`` and, in the
  same store write, an ``event_cancelled`` email job to its address goes into the outbox (key
  ``event_cancelled:<reminder id>``). Reminders already ``sending`` are past recall.
- ``user.deleted``: every reminder of the user is deleted.

Writes are conditional on the version read (a dispatcher's claim in between makes the write
retry on what is there now), and every write releases a dispatcher's lease, so the dispatcher
re-claims the reminder as it is now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from eventpost import contracts
from eventpost.messaging import Envelope, PermanentError
from eventpost.storage import NotFound, Store, VersionConflict
from eventpost.timeutil import Clock, format_time, parse_time, utcnow
from services.notifications import domain
from services.notifications.store import iter_matching, notifications

log = logging.getLogger(__name__)

_RETRIES = 10

#: Queue names (after the worker's prefix) and the routing keys bound to each: the
#: ``notifications.*`` entries of :data:`eventpost.contracts.SUBSCRIPTIONS`.
QUEUES: dict[str, tuple[str, ...]] = {
    name.removeprefix("notifications."): bindings
    for name, bindings in contracts.SUBSCRIPTIONS.items()
    if name.startswith("notifications.")
}


class NotificationHandlers:
    """The message handlers of the notifications service over its store."""

    def __init__(self, store: Store, *, clock: Clock = utcnow) -> None:
        self.store = store
        self.coll = notifications(store)
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
        if envelope.type not in (contracts.EMAIL_SENT, contracts.EMAIL_FAILED):
            raise PermanentError(f"not an email outcome: {envelope.type}")
        payload = envelope.payload
        correlation = payload.get("correlation")
        if not isinstance(correlation, Mapping) or "notification_id" not in correlation:
            return  # an outcome of a job that is not a reminder
        reminder_id = correlation.get("notification_id")
        version = correlation.get("version")
        if not isinstance(reminder_id, str) or not isinstance(version, int):
            raise PermanentError(f"malformed correlation {correlation!r}")
        doc = self.coll.get(reminder_id)
        if doc is None or doc["status"] != domain.SENDING or doc["version"] != version:
            log.info(
                "outcome already recorded or for another version; ignored",
                extra={"notification_id": reminder_id, "version": version},
            )
            return
        attempts = payload.get("attempts")
        changes: dict[str, Any] = {
            "attempts": attempts if isinstance(attempts, int) else doc.get("attempts", 0) + 1,
            "updated_at": format_time(self.clock()),
        }
        if envelope.type == contracts.EMAIL_SENT:
            changes.update(
                status=domain.SENT,
                sent_at=_time_or(payload.get("sent_at"), envelope.occurred_at),
                last_error=None,
            )
        else:
            error = payload.get("error")
            changes.update(
                status=domain.FAILED,
                last_error=str(error)[:1000] if error else "the email could not be delivered",
            )
        try:
            self.coll.update(reminder_id, changes, expected_version=version)
        except (VersionConflict, NotFound):
            log.info("reminder changed meanwhile; outcome ignored", extra={"id": reminder_id})
            return
        log.info(
            "reminder %s",
            changes["status"],
            extra={"notification_id": reminder_id, "attempts": changes["attempts"]},
        )

    # -- event changes -----------------------------------------------------------------------

    def on_event_change(self, envelope: Envelope) -> None:
        """``event.updated`` / ``event.deleted``."""
        if envelope.type == contracts.EVENT_UPDATED:
            event = envelope.payload.get("event")
            if not isinstance(event, Mapping) or not isinstance(event.get("id"), str):
                raise PermanentError("event.updated without an event")
            self.follow_event(event)
        elif envelope.type == contracts.EVENT_DELETED:
            event_id = envelope.payload.get("event_id")
            if not isinstance(event_id, str):
                raise PermanentError("event.deleted without an event_id")
            event = envelope.payload.get("event")
            self.cancel_event(
                event_id, event if isinstance(event, Mapping) else None, envelope.request_id
            )
        else:
            raise PermanentError(f"not an event change: {envelope.type}")

    def _scheduled_of(self, event_id: str) -> list[str]:
        return [
            d["id"]
            for d in iter_matching(self.coll, {"event_id": event_id, "status": domain.SCHEDULED})
        ]

    def follow_event(self, event: Mapping[str, Any]) -> int:
        """Move and refresh the event's scheduled reminders; returns how many changed."""
        try:
            domain.event_snapshot(event)
        except (KeyError, TypeError, ValueError) as exc:
            raise PermanentError(f"event.updated with an unusable event: {exc!r}") from None
        changed = 0
        for reminder_id in self._scheduled_of(event["id"]):
            for _ in range(_RETRIES):
                doc = self.coll.get(reminder_id)
                if doc is None:
                    break
                changes = domain.follow_event(doc, event, self.clock())
                if changes is None:
                    break
                try:
                    self.coll.update(reminder_id, changes, expected_version=doc["version"])
                except VersionConflict:
                    continue
                except NotFound:
                    break
                changed += 1
                if "send_at" in changes:
                    log.info(
                        "reminder follows its event",
                        extra={"notification_id": reminder_id, "send_at": changes["send_at"]},
                    )
                break
            else:
                raise RuntimeError(f"reminder {reminder_id} kept changing; will retry")
        return changed

    def cancel_event(
        self, event_id: str, event: Mapping[str, Any] | None, request_id: str | None
    ) -> int:
        """Cancel the event's scheduled reminders and queue an email to each owner; returns
        how many were cancelled."""
        cancelled = 0
        for reminder_id in self._scheduled_of(event_id):
            for _ in range(_RETRIES):
                doc = self.coll.get(reminder_id)
                if doc is None or doc["status"] != domain.SCHEDULED:
                    break
                job = domain.cancelled_job(doc, event)
                mail = Envelope.new(
                    contracts.EMAIL_SEND, job, request_id=request_id, clock=self.clock
                )
                stamp = format_time(self.clock())
                try:
                    self.coll.update(
                        reminder_id,
                        {
                            "status": domain.CANCELLED,
                            "lease_owner": None,
                            "lease_until": domain.NO_LEASE,
                            "updated_at": stamp,
                        },
                        expected_version=doc["version"],
                        events=[mail.to_dict()],
                    )
                except VersionConflict:
                    continue
                except NotFound:
                    break
                cancelled += 1
                log.info("reminder cancelled", extra={"notification_id": reminder_id})
                break
            else:
                raise RuntimeError(f"reminder {reminder_id} kept changing; will retry")
        return cancelled

    # -- users -------------------------------------------------------------------------------

    def on_user_deleted(self, envelope: Envelope) -> None:
        """``user.deleted``: delete every reminder of the user."""
        user_id = envelope.payload.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise PermanentError("user.deleted without a user_id")
        removed = self.coll.delete_many({"owner": user_id})
        log.info("reminders of a deleted user removed", extra={"count": removed})


def _time_or(value: Any, default: str) -> str:
    if isinstance(value, str):
        try:
            return format_time(parse_time(value))
        except ValueError:
            pass
    return default
