"""The delivery log: what keeps a redelivered email job from being sent twice.

One record per idempotency key in the collection ``deliveries`` of the email-sender's own
store (``open_store(settings, "email_sender", sqlite_synchronous="NORMAL")``: a power cut may
lose the last records, never a process crash, which at worst sends those emails once more)::

    {id: <idempotency_key>, status: "sending" | "sent" | "failed", message_id, attempts,
     sent_at, error, permanent, owner, lease_until, updated_at}

The worker marks a job ``sending`` just before it talks to SMTP, with itself as ``owner``
and a lease (``lease_until``: longer than a send can take), and ``sent`` once the server
accepted the message. A worker handed a copy of a job that another live worker holds the
lease of waits until that one is done (:meth:`DeliveryLog.wait_while_held`), then finds it
``sent`` and only reports it again. Two copies of one job at once are normal after a broker
failover: a publisher whose confirm was lost with a cluster node publishes again, and the
email-sender's consumers take both copies side by side. A lease ends early when its attempt
failed (:meth:`DeliveryLog.release`) or its owner, on this host, is a process that no longer
exists (a crashed worker restarted here need not wait for the lease).

A job whose key is already ``sent`` is not sent again (its outcome is reported again
instead, so a lost ``email.sent`` is recovered). Likewise a job that failed ``permanent``-ly
(the server answered 5xx) is not tried again, only reported again, unless an operator
replays it from the parking queue after fixing the cause.

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
  the copy is skipped). A worker on another host that holds a job longer than its lease
  (a send stuck past every SMTP timeout) may see the job sent a second time by another.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from eventpost.storage import (
    CollectionSpec,
    DuplicateKey,
    NotFound,
    Range,
    Store,
    VersionConflict,
)
from eventpost.timeutil import Clock, format_time, parse_time, utcnow

DELIVERIES = CollectionSpec("deliveries", indexes=(("updated_at",),))

SENDING = "sending"
SENT = "sent"
FAILED = "failed"


#: How long a ``sending`` record is another worker's by default.
DEFAULT_LEASE = timedelta(seconds=60)


class DeliveryInProgress(Exception):
    """Another worker started the same job a moment ago; try again later."""


def new_owner() -> str:
    """A name for one delivering worker: ``host:pid:random`` (the host and pid let a worker
    on the same host see that a lease's owner died)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_gone(owner: str) -> bool:
    """Whether ``owner`` (see :func:`new_owner`) was a process of this host that has exited.
    An owner elsewhere, or unreadable, counts as alive: only its lease ends it."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
    owner: str | None = None
    lease_until: str | None = None

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
            owner=doc.get("owner"),
            lease_until=doc.get("lease_until"),
        )


class DeliveryLog:
    """The ``deliveries`` collection of ``store`` (see the module docstring), as seen by one
    delivering worker: ``owner`` names it in the leases it takes (default: a new unique
    name), ``lease`` is how long its ``sending`` records keep other workers waiting."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = utcnow,
        owner: str | None = None,
        lease: timedelta = DEFAULT_LEASE,
    ) -> None:
        self._store = store
        self._deliveries = store.collection(DELIVERIES)
        self._clock = clock
        self.owner = owner or new_owner()
        self.lease = lease

    def get(self, key: str) -> Delivery | None:
        """The record of ``key``, or None."""
        doc = self._deliveries.get(key)
        return Delivery.from_doc(doc) if doc is not None else None

    def begin(self, key: str, message_id: str, attempt: int, known: Delivery | None) -> None:
        """Record that ``key`` is being sent (``known`` is what :meth:`get` returned just
        before). Raises :class:`DeliveryInProgress` when another worker wrote the record
        in between."""
        now = self._clock()
        changes = {
            "status": SENDING,
            "message_id": message_id,
            "attempts": attempt,
            "error": None,
            "permanent": False,
            "owner": self.owner,
            "lease_until": format_time(now + self.lease),
            "updated_at": format_time(now),
        }
        try:
            if known is None:
                self._deliveries.insert({"id": key, "sent_at": None, **changes})
            else:
                self._deliveries.update(key, changes, expected_version=known.version)
        except (DuplicateKey, VersionConflict) as exc:
            raise DeliveryInProgress(f"another worker is delivering {key!r}") from exc

    def held_elsewhere(self, known: Delivery) -> bool:
        """Whether another worker is delivering ``known`` right now: it is ``sending`` under
        a lease that has not ended, taken by an owner other than this one that is not a
        process of this host known to have exited."""
        if known.status != SENDING or not known.owner or not known.lease_until:
            return False
        if known.owner == self.owner or parse_time(known.lease_until) <= self._clock():
            return False
        return not _owner_is_gone(known.owner)

    def wait_while_held(
        self,
        key: str,
        known: Delivery,
        *,
        poll: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Delivery | None:
        """Wait while another worker holds ``key`` (:meth:`held_elsewhere`), at most this
        log's lease on the monotonic clock; returns the record as it is then."""
        deadline = time.monotonic() + self.lease.total_seconds()
        current: Delivery | None = known
        while current is not None and self.held_elsewhere(current):
            if time.monotonic() >= deadline:
                break
            sleep(poll)
            current = self.get(key)
        return current

    def release(self, key: str) -> None:
        """End this worker's lease on ``key`` after an attempt that failed (the record stays
        ``sending``: the server may have the message), so a retry anywhere goes ahead."""
        known = self.get(key)
        if known is None or known.status != SENDING or known.owner != self.owner:
            return
        try:
            self._deliveries.update(
                key,
                {"lease_until": None, "updated_at": format_time(self._clock())},
                expected_version=known.version,
            )
        except VersionConflict:
            return  # another worker took it over meanwhile: its lease stands

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
                "lease_until": None,
            },
        )

    def sent_many(self, accepted: Sequence[tuple[str, str, int, datetime]]) -> None:
        """Record several accepted emails at once, each ``(key, message_id, attempt,
        sent_at)``: one transaction where the store has them (else one write after the
        other: a failure leaves the ones before it recorded)."""
        with self._store.transaction():
            for key, message_id, attempt, sent_at in accepted:
                self.sent(key, message_id, attempt, sent_at)

    def failed(self, key: str, error: str, attempt: int, *, permanent: bool) -> Delivery:
        """Record that the email of ``key`` was given up: ``permanent`` when the server
        refused it for good (then no later copy is tried), else out of retries (a later copy
        may still send it). A record that says ``sent`` stays as it is."""
        known = self.get(key)
        if known is not None and known.status == SENT:
            return known
        return self._finish(
            key,
            {
                "status": FAILED,
                "attempts": attempt,
                "error": error[:1000],
                "permanent": permanent,
                "lease_until": None,
            },
        )

    def _finish(self, key: str, changes: dict[str, Any]) -> Delivery:
        changes["updated_at"] = format_time(self._clock())
        try:
            doc = self._deliveries.update(key, changes)
        except NotFound:  # never begun here (e.g. given up before any send)
            doc = self._deliveries.insert(
                {"id": key, "message_id": None, "sent_at": None, "error": None, **changes}
            )
        return Delivery.from_doc(doc)

    def prune(self, older_than: timedelta) -> int:
        """Forget records not touched for ``older_than``; returns how many went. Jobs are
        not redelivered that late, so the window of protection stays intact."""
        cutoff = format_time(self._clock() - older_than)
        return self._deliveries.delete_many({"updated_at": Range(lt=cutoff)})
