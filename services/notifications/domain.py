"""Reminder rules of the notifications service: no I/O, only values in and values out.

A reminder (a *notification*) asks for one email about one event at ``send_at``. It is set
either at an absolute time (``send_at``) or as a duration ``before`` the event's start; a
``before``-style reminder follows its event when the start moves.

Life cycle, each arrow a pure function here that returns the changes to write (or None when
the step does not apply); the dispatcher, the message handlers and the use cases write them::

    scheduled --(claimed_for_sending: due, claimed, job handed to the outbox)--> sending
    sending   --(record_outcome: email.sent)--> sent
    sending   --(record_outcome: email.failed)--> failed
    failed    --(record_outcome: email.sent of that same job, replayed from parking)--> sent
    scheduled --(cancelled: event deleted)--> cancelled
    scheduled --(reminder_changes: PATCH, follow_event: event updated)--> scheduled

Only a ``scheduled`` reminder can be changed. The dispatcher claims a due reminder with a lease
(``lease_owner``/``lease_until``) while it stays ``scheduled``; every other write to a reminder
releases any lease (``lease_until`` back to :data:`NO_LEASE`) and bumps the version, so a
dispatcher whose claim went stale finds a different version and changes nothing.

A broken rule is an :mod:`eventpost.errors` error: :class:`~eventpost.errors.Invalid` naming
the field at fault, :class:`NotChangeable` (409) for a reminder past ``scheduled``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from eventpost.contracts import EmailFailed, EmailJob, EmailSent
from eventpost.errors import Conflict, Invalid, InvalidMany
from eventpost.timeutil import format_time, parse_rfc3339, parse_time

SCHEDULED = "scheduled"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (SCHEDULED, SENDING, SENT, FAILED, CANCELLED)

#: ``lease_until`` of a reminder nobody holds: earlier than any real time, so "the lease has
#: ended" is one range condition (``lease_until < now``) for fresh and expired claims alike.
NO_LEASE = format_time(datetime(1970, 1, 1, tzinfo=UTC))

#: The fields of a write that releases any dispatcher's lease (every write but a claim does).
RELEASED_LEASE: Mapping[str, Any] = {"lease_owner": None, "lease_until": NO_LEASE}

#: The longest duration accepted for ``before`` and ``delay`` (about ten years).
MAX_DURATION = timedelta(days=3660)
SUBJECT_MAX = 200
MESSAGE_MAX = 2000

REMINDER_TEMPLATE = "reminder"
CANCELLED_TEMPLATE = "event_cancelled"

# ASCII digits only: ``\d`` would also take other scripts' digits ("PT\u0662H"), which the
# OpenAPI's pattern (and any client) does not count as a duration.
_DURATION = re.compile(
    r"^P(?:(?P<weeks>[0-9]{1,9})W)?(?:(?P<days>[0-9]{1,9})D)?"
    r"(?:T(?:(?P<hours>[0-9]{1,9})H)?(?:(?P<minutes>[0-9]{1,9})M)?"
    r"(?:(?P<seconds>[0-9]{1,9}(?:[.,][0-9]{1,6})?)S)?)?$"
)


class NotChangeable(Conflict):
    """409: the reminder is no longer ``scheduled``, so it cannot be changed."""

    def __init__(self, reminder_status: str) -> None:
        super().__init__(
            f"The reminder is {reminder_status}; only a scheduled reminder can be changed."
        )
        self.reminder_status = reminder_status


# -- durations --------------------------------------------------------------------------------


def parse_duration(value: str, field: str) -> timedelta:
    """An ISO 8601 duration (``PT2H``, ``P1D``, ``P1DT12H``, ``PT90M``, ``P2W``) as a timedelta.

    Years and months are refused (they have no fixed length; use days), so are negative and
    empty durations and anything over :data:`MAX_DURATION`. Raises :class:`Invalid`.
    """
    text = value.strip().upper() if isinstance(value, str) else ""
    if text.startswith("-"):
        raise Invalid("a negative duration is not allowed", field)
    match = _DURATION.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        if text.startswith("P") and any(c in text[1:].split("T", 1)[0] for c in "YM"):
            raise Invalid(
                "years and months have no fixed length; give days instead (e.g. P30D)", field
            )
        raise Invalid("must be an ISO 8601 duration such as PT2H, P1D or P1DT30M", field)
    parts = match.groupdict()
    seconds = float((parts["seconds"] or "0").replace(",", "."))
    try:
        duration = timedelta(
            weeks=int(parts["weeks"] or 0),
            days=int(parts["days"] or 0),
            hours=int(parts["hours"] or 0),
            minutes=int(parts["minutes"] or 0),
            seconds=seconds,
        )
    except OverflowError:
        raise Invalid("the duration is too long", field) from None
    if duration > MAX_DURATION:
        raise Invalid("the duration is too long (at most 3660 days)", field)
    return duration


def format_duration(duration: timedelta) -> str:
    """The canonical ISO 8601 form of a non-negative duration: ``P1DT2H30M``, ``PT0S``."""
    micros = duration // timedelta(microseconds=1)
    days, rest = divmod(micros, 86_400_000_000)
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    secs, frac = divmod(rest, 1_000_000)
    out = "P"
    if days:
        out += f"{days}D"
    clock = ""
    if hours:
        clock += f"{hours}H"
    if minutes:
        clock += f"{minutes}M"
    if secs or frac:
        clock += f"{secs}.{frac:06d}".rstrip("0").rstrip(".") + "S" if frac else f"{secs}S"
    if clock:
        out += "T" + clock
    return out if out != "P" else "PT0S"


# -- events as the reminder sees them -------------------------------------------------------


def event_snapshot(event: Mapping[str, Any]) -> dict[str, Any]:
    """What a reminder keeps of its event (from the API's event JSON), so the dispatcher
    never has to ask the events service at send time."""
    place = event.get("place") or {}
    ends_at = event.get("ends_at")
    return {
        "title": event["title"],
        "starts_at": format_time(parse_time(event["starts_at"])),
        "ends_at": format_time(parse_time(ends_at)) if ends_at else None,
        "place": {"name": place.get("name"), "address": place.get("address")},
        "updated_at": event.get("updated_at"),
    }


def default_subject(title: str) -> str:
    """``Reminder: <event title>``, cut to the subject limit."""
    return f"Reminder: {title}"[:SUBJECT_MAX]


# -- addresses ------------------------------------------------------------------------------


def verified_addresses(user: Mapping[str, Any]) -> list[str]:
    """The caller's addresses a reminder may go to: the primary (verified by definition)
    and every verified secondary."""
    out = [user["email"]] if user.get("email") else []
    for item in user.get("secondary_emails") or []:
        if item.get("verified") and item.get("email"):
            out.append(item["email"])
    return out


def choose_email(user: Mapping[str, Any], requested: str | None) -> str:
    """The address a reminder goes to: ``requested`` if it is one of the caller's verified
    addresses (compared case-insensitively, returned as the account spells it), else the
    primary when nothing was requested. Raises :class:`Invalid`."""
    addresses = verified_addresses(user)
    if requested is None:
        if not addresses:
            raise Invalid("the account has no primary address", "email")
        return addresses[0]
    wanted = requested.strip().casefold()
    for address in addresses:
        if address.casefold() == wanted:
            return address
    raise Invalid("must be a verified address of your account", "email")


# -- times ----------------------------------------------------------------------------------


def send_time_before(starts_at: str, before: timedelta) -> str:
    """The send time of a reminder ``before`` the start ``starts_at`` (both stored forms)."""
    return format_time(parse_time(starts_at) - before)


def require_future(send_at: str, now: datetime, field: str) -> None:
    """A reminder must be set for a time still to come."""
    if parse_time(send_at) <= now:
        raise Invalid("the reminder time is in the past", field)


def check_text(field: str, value: str | None, limit: int, *, single_line: bool) -> None:
    """Length and (for subjects, which become a mail header) line-break checks."""
    if value is None:
        return
    if single_line and not value.strip():
        raise Invalid("must not be empty", field)
    if len(value) > limit:
        raise Invalid(f"must be at most {limit} characters", field)
    if single_line and ("\r" in value or "\n" in value):
        raise Invalid("must be a single line", field)
    if any(ord(ch) < 32 and ch not in "\r\n\t" for ch in value):
        raise Invalid("must not contain control characters", field)


def parse_send_at(value: str, field: str) -> str:
    """A time the client gave (RFC 3339 with an offset) in stored form, or
    :class:`Invalid` about ``field``."""
    try:
        return format_time(parse_rfc3339(value))
    except ValueError:
        raise Invalid(
            "must be an RFC 3339 time with an offset, e.g. 2026-12-01T20:00:00+01:00", field
        ) from None


def require_one_time(send_at: str | None, before: str | None) -> None:
    """A new reminder names exactly one of ``send_at`` and ``before`` (a 422 about both)."""
    if (send_at is None) == (before is None):
        message = "give exactly one of send_at and before"
        raise InvalidMany(
            [Invalid(message, "send_at"), Invalid(message, "before")],
            detail="Give exactly one of send_at and before.",
        )


def parse_patch(sent: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a PATCH sent, times parsed as :func:`reminder_changes` takes them
    (``send_at`` in stored form, ``before`` / ``delay`` as timedelta); none of the three may
    be null."""
    patch = dict(sent)
    for name in ("send_at", "before", "delay"):
        if name in patch and patch[name] is None:
            raise Invalid("must not be null", name)
    if "send_at" in patch:
        patch["send_at"] = parse_send_at(patch["send_at"], "send_at")
    for name in ("before", "delay"):
        if name in patch:
            patch[name] = parse_duration(patch[name], name)
    return patch


def require_changeable(current: Mapping[str, Any]) -> None:
    """Only a ``scheduled`` reminder can be changed (else :class:`NotChangeable`)."""
    if current["status"] != SCHEDULED:
        raise NotChangeable(current["status"])


# -- commands -------------------------------------------------------------------------------


def new_reminder(
    *,
    reminder_id: str,
    owner: str,
    event_id: str,
    event: Mapping[str, Any],
    user: Mapping[str, Any],
    send_at: str | None,
    before: timedelta | None,
    email: str | None,
    subject: str | None,
    message: str | None,
    now: datetime,
    request_id: str | None,
) -> dict[str, Any]:
    """A new ``scheduled`` reminder document (``send_at`` already in stored form), or
    :class:`Invalid`. Exactly one of ``send_at`` and ``before`` must be given."""
    if (send_at is None) == (before is None):
        raise Invalid("give exactly one of send_at and before", "send_at")
    check_text("subject", subject, SUBJECT_MAX, single_line=True)
    check_text("message", message, MESSAGE_MAX, single_line=False)
    snapshot = event_snapshot(event)
    if before is not None:
        send_at = send_time_before(snapshot["starts_at"], before)
        require_future(send_at, now, "before")
    else:
        assert send_at is not None
        require_future(send_at, now, "send_at")
    stamp = format_time(now)
    return {
        "id": reminder_id,
        "owner": owner,
        "event_id": event_id,
        "email": choose_email(user, email),
        "subject": subject if subject is not None else default_subject(snapshot["title"]),
        "subject_is_default": subject is None,
        "message": message,
        "send_at": send_at,
        "before": format_duration(before) if before is not None else None,
        "before_seconds": before.total_seconds() if before is not None else None,
        "status": SCHEDULED,
        "attempts": 0,
        "sent_at": None,
        "last_error": None,
        "created_at": stamp,
        "updated_at": stamp,
        "event": snapshot,
        **RELEASED_LEASE,
        "request_id": request_id,
    }


def reminder_changes(
    current: Mapping[str, Any],
    patch: Mapping[str, Any],
    *,
    now: datetime,
    event: Mapping[str, Any] | None = None,
    user: Mapping[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The fields a PATCH changes on a ``scheduled`` reminder, or :class:`NotChangeable` /
    :class:`Invalid`.

    ``patch`` holds the fields the client sent, durations already parsed: ``send_at`` (stored
    form), ``before`` / ``delay`` (timedelta), ``email``, ``subject``, ``message`` (None resets
    subject and email to their defaults and clears the message). ``event`` (fresh event JSON)
    is needed for ``before``; ``user`` (the caller) for ``email``.

    - ``send_at`` makes the reminder absolute (``before`` becomes null).
    - ``before`` makes it follow the event again: ``send_at`` = start - ``before``.
    - ``delay`` is added to the current ``send_at``. A ``before``-style reminder keeps following
      its event with ``before`` shortened by the delay; if that would put it after the event's
      start, it becomes absolute.
    """
    require_changeable(current)
    given = [name for name in ("send_at", "before", "delay") if name in patch]
    if len(given) > 1:
        raise Invalid(f"give only one of send_at, before and delay (got {given})", given[1])
    changes: dict[str, Any] = {}
    snapshot = dict(current["event"])
    if event is not None:
        snapshot = event_snapshot(event)
        changes["event"] = snapshot
    for name in ("send_at", "before", "delay"):
        if name in patch and patch[name] is None:
            raise Invalid("must not be null", name)
    if "send_at" in patch:
        require_future(patch["send_at"], now, "send_at")
        changes.update(send_at=patch["send_at"], before=None, before_seconds=None)
    elif "before" in patch:
        before: timedelta = patch["before"]
        send_at = send_time_before(snapshot["starts_at"], before)
        require_future(send_at, now, "before")
        changes.update(
            send_at=send_at, before=format_duration(before), before_seconds=before.total_seconds()
        )
    elif "delay" in patch:
        delay: timedelta = patch["delay"]
        send_at = format_time(parse_time(current["send_at"]) + delay)
        require_future(send_at, now, "delay")
        changes["send_at"] = send_at
        if current.get("before_seconds") is not None:
            left = timedelta(seconds=current["before_seconds"]) - delay
            if left >= timedelta(0):
                changes.update(before=format_duration(left), before_seconds=left.total_seconds())
            else:
                changes.update(before=None, before_seconds=None)
    if "email" in patch:
        if user is None:
            raise Invalid("the caller's addresses are unknown", "email")
        changes["email"] = choose_email(user, patch["email"])
    if "subject" in patch:
        subject = patch["subject"]
        check_text("subject", subject, SUBJECT_MAX, single_line=True)
        changes["subject"] = subject if subject is not None else default_subject(snapshot["title"])
        changes["subject_is_default"] = subject is None
    elif current.get("subject_is_default") and "event" in changes:
        changes["subject"] = default_subject(snapshot["title"])
    if "message" in patch:
        check_text("message", patch["message"], MESSAGE_MAX, single_line=False)
        changes["message"] = patch["message"]
    changes.update(RELEASED_LEASE, updated_at=format_time(now), request_id=request_id)
    return changes


def follow_event(
    current: Mapping[str, Any], event: Mapping[str, Any], now: datetime
) -> dict[str, Any] | None:
    """What ``event.updated`` changes on one reminder, or None when nothing (already applied,
    an older version of the event, or a reminder past ``scheduled``).

    The snapshot is refreshed; a ``before``-style reminder moves to start - ``before``
    (absolute ones stay where their owner put them). A reminder moved into the past becomes
    due at once: the event now starts sooner than the owner wanted to be told."""
    if current["status"] != SCHEDULED:
        return None
    snapshot = event_snapshot(event)
    known = current.get("event") or {}
    if (
        known.get("updated_at")
        and snapshot.get("updated_at")
        and parse_time(snapshot["updated_at"]) < parse_time(known["updated_at"])
    ):
        return None  # a late copy of an older change
    changes: dict[str, Any] = {}
    if snapshot != known:
        changes["event"] = snapshot
        if current.get("subject_is_default"):
            subject = default_subject(snapshot["title"])
            if subject != current["subject"]:
                changes["subject"] = subject
    if current.get("before_seconds") is not None:
        send_at = send_time_before(
            snapshot["starts_at"], timedelta(seconds=current["before_seconds"])
        )
        if send_at != current["send_at"]:
            changes["send_at"] = send_at
    if not changes:
        return None
    changes.update(RELEASED_LEASE, updated_at=format_time(now))
    return changes


# -- dispatch and outcomes ------------------------------------------------------------------


def claimed_for_sending(
    claimed: Mapping[str, Any], *, owner: str, now: datetime
) -> dict[str, Any] | None:
    """scheduled -> sending: the changes that hand a reminder ``owner`` claimed over to the
    outbox, or None when it is not ``scheduled``, the claim is not ``owner``'s or the
    reminder is not due (a clock set back: never send early). Written with the reminder's
    :func:`reminder_job` in one write, conditional on the version the claim returned."""
    if (
        claimed["status"] != SCHEDULED
        or claimed.get("lease_owner") != owner
        or parse_time(claimed["send_at"]) > now
    ):
        return None
    stamp = format_time(now)
    return {
        "status": SENDING,
        **RELEASED_LEASE,
        "dispatched_at": stamp,
        "dispatched_by": owner,
        "updated_at": stamp,
    }


def sending_version(claimed: Mapping[str, Any]) -> int:
    """The version the reminder will have once handed over (the store bumps it by one on
    every write): the version its job and the job's outcome name."""
    return int(claimed["version"]) + 1


def record_outcome(
    current: Mapping[str, Any] | None,
    outcome: EmailSent | EmailFailed,
    *,
    version: int,
    now: datetime,
    reported_at: str,
) -> dict[str, Any] | None:
    """sending -> sent / failed: the changes the outcome of the job of the reminder's
    ``sending`` version ``version`` makes, or None when it does not apply (the reminder is
    gone, the outcome already recorded, or it is for another version). ``reported_at`` (the
    outcome message's time) stands in for a ``sent_at`` that is not a time.

    A job refused for good is parked; replayed once the cause is fixed (``invoke parked
    --replay``), its ``email.sent`` comes after its ``email.failed``: failed -> sent, for the
    job that failed only (the failed write bumped the version by one)."""
    if current is None:
        return None
    if current["status"] == FAILED and isinstance(outcome, EmailSent):
        if current["version"] != version + 1:
            return None
    elif current["status"] != SENDING or current["version"] != version:
        return None
    changes: dict[str, Any] = {"attempts": outcome.attempts, "updated_at": format_time(now)}
    if isinstance(outcome, EmailSent):
        changes.update(status=SENT, sent_at=_time_or(outcome.sent_at, reported_at), last_error=None)
    else:
        error = outcome.error[:1000] if outcome.error else "the email could not be delivered"
        changes.update(status=FAILED, last_error=error)
    return changes


def cancelled(current: Mapping[str, Any] | None, *, now: datetime) -> dict[str, Any] | None:
    """scheduled -> cancelled (its event was deleted): the changes, or None for a reminder
    that is gone or past ``scheduled``. Written with its :func:`cancelled_job`."""
    if current is None or current["status"] != SCHEDULED:
        return None
    return {"status": CANCELLED, **RELEASED_LEASE, "updated_at": format_time(now)}


def _time_or(value: str, default: str) -> str:
    try:
        return format_time(parse_time(value))
    except ValueError:
        return default


# -- email jobs -----------------------------------------------------------------------------


def reminder_key(reminder_id: str, version: int) -> str:
    """The idempotency key of the email of one reminder version."""
    return f"reminder:{reminder_id}:v{version}"


def _job_event(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The event as the email templates read it (``context.event``)."""
    place = snapshot.get("place") or {}
    event: dict[str, Any] = {
        "title": snapshot["title"],
        "starts_at": snapshot["starts_at"],
        "place": {"name": place.get("name"), "address": place.get("address")},
    }
    if snapshot.get("ends_at"):
        event["ends_at"] = snapshot["ends_at"]
    return event


def reminder_job(reminder: Mapping[str, Any], version: int) -> EmailJob:
    """The ``email.send`` job of a due reminder whose ``sending`` version is ``version``:
    the ``reminder`` template names the event, its start (rendered readable by the
    email-sender) and its place; the outcome comes back with the correlation."""
    return EmailJob(
        to=reminder["email"],
        idempotency_key=reminder_key(reminder["id"], version),
        template=REMINDER_TEMPLATE,
        subject=reminder["subject"],
        context={
            "event": _job_event(reminder["event"]),
            "message": reminder.get("message"),
            "event_id": reminder["event_id"],
            "notification_id": reminder["id"],
        },
        correlation={"notification_id": reminder["id"], "version": version},
    )


def cancelled_job(reminder: Mapping[str, Any], event: Mapping[str, Any] | None) -> EmailJob:
    """The ``email.send`` job telling a reminder's owner that its event was cancelled
    (``event`` is the deleted event's JSON when the message carried it, else the reminder's
    snapshot is used). One per reminder: key ``event_cancelled:<reminder id>``."""
    snapshot = reminder["event"]
    if event and event.get("title") and event.get("starts_at"):
        snapshot = event_snapshot(event)
    return EmailJob(
        to=reminder["email"],
        idempotency_key=f"event_cancelled:{reminder['id']}",
        template=CANCELLED_TEMPLATE,
        context={
            "event": _job_event(snapshot),
            "event_id": reminder["event_id"],
            "notification_id": reminder["id"],
        },
    )


def public_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The notification as API.md shows it."""
    return {
        "id": doc["id"],
        "event_id": doc["event_id"],
        "email": doc["email"],
        "subject": doc["subject"],
        "message": doc.get("message"),
        "send_at": doc["send_at"],
        "before": doc.get("before"),
        "status": doc["status"],
        "attempts": doc.get("attempts", 0),
        "sent_at": doc.get("sent_at"),
        "last_error": doc.get("last_error"),
        "created_at": doc["created_at"],
        "updated_at": doc["updated_at"],
    }
