"""The delivery log: what keeps a redelivered email job from being sent twice.

One record per idempotency key in the collection ``deliveries`` of the email-sender's own
store (``open_store(settings, "email_sender", sqlite_synchronous="NORMAL")``: a power cut may
lose the last records, never a process crash, which at worst sends those emails once more)::

    {id: <idempotency_key>, status: "sending" | "sent" | "failed", message_id, attempts,
     sent_at, error, permanent, updated_at}

The worker marks a job ``sending`` just before it talks to SMTP and ``sent`` once the server
accepted the message; a job whose key is already ``sent`` is not sent again (its outcome is
reported again instead, so a lost ``email.sent`` is recovered). Likewise a job that failed
``permanent``-ly (the server answered 5xx) is not tried again, only reported again, unless
an operator replays it from the parking queue after fixing the cause.

What remains, on purpose (delivery is at-least-once, never at-most-once):

- A crash (or a lost store) between the server's acceptance and the ``sent`` record: the
  broker redelivers the job, the record still says ``sending``, and the email goes out a
  second time. The record is not trusted to mean "maybe sent, skip it", because that would
  turn every crash before the send into a lost email. Both copies carry the same
  Message-ID, so mail stores that deduplicate on it show one.
- An SMTP timeout after the server took the message but before its reply arrived: the job is
  retried and the server gets it again (same Message-ID).
- Two copies of one job handled at the very same moment by two workers: the second one to
  write ``sending`` sees a conflict and is retried later (by then the first is ``sent`` and
  the copy is skipped); if the first worker is still at it, both may send.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from eventpost.storage import (
    CollectionSpec,
    DuplicateKey,
    Range,
    Store,
    VersionConflict,
)
from eventpost.timeutil import Clock, format_time, utcnow

DELIVERIES = CollectionSpec("deliveries", indexes=(("updated_at",),))

SENDING = "sending"
SENT = "sent"
FAILED = "failed"


class DeliveryInProgress(Exception):
    """Another worker started the same job a moment ago; try again later."""


@dataclass(frozen=True)
class Delivery:
    """The delivery log's record of one idempotency key."""

    key: str
    status: str
    message_id: str | None
    attempts: int
    sent_at: str | None
    error: str | None
    permanent: bool
    version: int

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Delivery:
        return cls(
            key=doc["id"],
            status=doc["status"],
            message_id=doc.get("message_id"),
            attempts=int(doc.get("attempts") or 0),
            sent_at=doc.get("sent_at"),
            error=doc.get("error"),
            permanent=bool(doc.get("permanent")),
            version=int(doc["version"]),
        )


class DeliveryLog:
    """The ``deliveries`` collection of ``store`` (see the module docstring)."""

    def __init__(self, store: Store, *, clock: Clock = utcnow) -> None:
        self._deliveries = store.collection(DELIVERIES)
        self._clock = clock

    def get(self, key: str) -> Delivery | None:
        """The record of ``key``, or None."""
        doc = self._deliveries.get(key)
        return Delivery.from_doc(doc) if doc is not None else None

    def begin(self, key: str, message_id: str, attempt: int, known: Delivery | None) -> None:
        """Record that ``key`` is being sent (``known`` is what :meth:`get` returned just
        before). Raises :class:`DeliveryInProgress` when another worker wrote the record
        in between."""
        changes = {
            "status": SENDING,
            "message_id": message_id,
            "attempts": attempt,
            "error": None,
            "permanent": False,
            "updated_at": format_time(self._clock()),
        }
        try:
            if known is None:
                self._deliveries.insert({"id": key, "sent_at": None, **changes})
            else:
                self._deliveries.update(key, changes, expected_version=known.version)
        except (DuplicateKey, VersionConflict) as exc:
            raise DeliveryInProgress(f"another worker is delivering {key!r}") from exc

    def sent(self, key: str, message_id: str, attempt: int, sent_at: datetime) -> Delivery:
        """Record that the server accepted the email of ``key``."""
        return self._finish(
            key,
            {
                "status": SENT,
                "message_id": message_id,
                "attempts": attempt,
                "sent_at": format_time(sent_at),
                "error": None,
                "permanent": False,
            },
        )

    def failed(self, key: str, error: str, attempt: int, *, permanent: bool) -> Delivery:
        """Record that the email of ``key`` was given up: ``permanent`` when the server
        refused it for good (then no later copy is tried), else out of retries (a later copy
        may still send it). A record that says ``sent`` stays as it is."""
        known = self.get(key)
        if known is not None and known.status == SENT:
            return known
        return self._finish(
            key,
            {"status": FAILED, "attempts": attempt, "error": error[:1000], "permanent": permanent},
        )

    def _finish(self, key: str, changes: dict[str, Any]) -> Delivery:
        changes["updated_at"] = format_time(self._clock())
        if self._deliveries.get(key) is None:
            doc = self._deliveries.insert(
                {"id": key, "message_id": None, "sent_at": None, "error": None, **changes}
            )
        else:
            doc = self._deliveries.update(key, changes)
        return Delivery.from_doc(doc)

    def prune(self, older_than: timedelta) -> int:
        """Forget records not touched for ``older_than``; returns how many went. Jobs are
        not redelivered that late, so the window of protection stays intact."""
        cutoff = format_time(self._clock() - older_than)
        return self._deliveries.delete_many({"updated_at": Range(lt=cutoff)})
