"""A job becomes an email: its template rendered, its headers set (pure, no I/O; the
templates are read from the package once and cached).

Templates and the ``context`` each one reads (missing required keys make the job invalid):

- ``welcome``: ``username``.
- ``verification``: ``token``; optional ``username``, ``email``, ``expires_at``.
- ``reminder``: ``event`` (the event as the API shows it: ``title``, ``starts_at``, ``place``
  with ``name`` and optional ``address``; optional ``ends_at``, ``description``); optional
  ``message`` (the user's own note) and ``username``.
- ``event_cancelled``: ``event`` as above; optional ``message``, ``username``.

A job without a template carries ``subject`` and ``text`` (and optionally ``html``, which is
sent verbatim: its producer must have escaped it; without it an HTML part is made from the
escaped text). A job's ``subject`` overrides the template's. Jobs come from
:mod:`email_sender.jobs`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import cache
from typing import Any

import jinja2

from email_sender.jobs import CONTROL_CHARACTERS, InvalidJob, digest
from eventpost.contracts import EmailJob
from eventpost.timeutil import parse_time

IDEMPOTENCY_HEADER = "X-EventPost-Idempotency-Key"
REQUEST_ID_HEADER = "X-Request-ID"

_MAX_SUBJECT = 250
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


# -- templates -----------------------------------------------------------------------------


def readable_time(value: str) -> str:
    """``2026-12-01T20:00:00+01:00`` -> ``Tuesday 1 December 2026, 19:00 UTC``."""
    try:
        dt = parse_time(value)
    except (TypeError, ValueError):
        raise InvalidJob(f"not a time with an offset: {value!r}") from None
    return f"{dt:%A} {dt.day} {dt:%B %Y, %H:%M} UTC"


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("email_sender", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["readable_time"] = readable_time
    return env


def _mapping(context: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = context.get(name)
    if not isinstance(value, Mapping):
        raise InvalidJob(f"context.{name} must be an object")
    return value


def _text(context: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = context.get(name)
    if value is None or value == "":
        if required:
            raise InvalidJob(f"context.{name} is required")
        return None
    if not isinstance(value, str):
        raise InvalidJob(f"context.{name} must be a string")
    return value


def _event_context(context: Mapping[str, Any]) -> dict[str, Any]:
    event = _mapping(context, "event")
    place = event.get("place") or {}
    if not isinstance(place, Mapping):
        raise InvalidJob("context.event.place must be an object")
    title = _text(event, "title", required=True)
    starts_at = _text(event, "starts_at", required=True)
    ends_at = _text(event, "ends_at")
    return {
        "username": _text(context, "username"),
        "message": _text(context, "message"),
        "title": title,
        "description": _text(event, "description"),
        "starts": readable_time(starts_at),  # type: ignore[arg-type]
        "ends": readable_time(ends_at) if ends_at else None,
        "place_name": _text(place, "name"),
        "place_address": _text(place, "address"),
    }


def _welcome(context: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    username = _text(context, "username", required=True)
    return f"Welcome to EventPost, {username}!", {"username": username}


def _verification(context: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    expires_at = _text(context, "expires_at")
    values = {
        "username": _text(context, "username"),
        "email": _text(context, "email"),
        "token": _text(context, "token", required=True),
        "expires": readable_time(expires_at) if expires_at else None,
    }
    return "Verify your email address for EventPost", values


def _reminder(context: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    values = _event_context(context)
    return f"Reminder: {values['title']}", values


def _event_cancelled(context: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    values = _event_context(context)
    return f"Cancelled: {values['title']}", values


_CONTEXTS: dict[str, Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]] = {
    "welcome": _welcome,
    "verification": _verification,
    "reminder": _reminder,
    "event_cancelled": _event_cancelled,
}


def _render(name: str, values: Mapping[str, Any]) -> str:
    try:
        return _environment().get_template(name).render(values)
    except jinja2.UndefinedError as exc:
        raise InvalidJob(f"template {name}: {exc}") from None


@dataclass(frozen=True)
class Content:
    """What an email says: subject, plain text and HTML."""

    subject: str
    text: str
    html: str


def content_of(job: EmailJob) -> Content:
    """Subject, text and HTML of a job (its template rendered, or its own text).
    Raises :class:`InvalidJob`."""
    if job.template is not None:
        default_subject, values = _CONTEXTS[job.template](job.context)
        subject = job.subject or default_subject
        text = _render(f"{job.template}.txt", values)
        html = _render(f"{job.template}.html", {**values, "subject": subject})
    else:
        subject = job.subject or ""
        text = job.text or ""
        html = job.html or _render("message.html", {"subject": subject, "text": text})
    return Content(subject=_one_line(subject), text=text, html=html)


def _one_line(subject: str) -> str:
    """A subject fit for a header: no line breaks or control characters, bounded length."""
    flat = " ".join(CONTROL_CHARACTERS.sub(" ", subject).split())
    if not flat:
        raise InvalidJob("the subject is empty")
    return flat[:_MAX_SUBJECT]


# -- the email -----------------------------------------------------------------------------


def _domain(mail_from: str) -> str:
    address = parseaddr(mail_from)[1]
    _, _, domain = address.rpartition("@")
    return domain or "eventpost.local"


def message_id_for(idempotency_key: str, mail_from: str) -> str:
    """The Message-ID of every copy of the job with ``idempotency_key``: the same key gives
    the same id, so a duplicate that slips through is recognisable (and mail stores that
    deduplicate by Message-ID drop it). Unlike :func:`email.utils.make_msgid` it has no time
    or random part, on purpose."""
    return f"<{digest('eventpost', idempotency_key)}.eventpost@{_domain(mail_from)}>"


def envelope_sender(mail_from: str) -> str:
    """The bare address of ``MAIL_FROM`` (``EventPost <a@b>`` -> ``a@b``)."""
    return parseaddr(mail_from)[1] or mail_from


def build_email(
    job: EmailJob,
    *,
    mail_from: str,
    now: datetime,
    request_id: str | None = None,
) -> EmailMessage:
    """The email of ``job``: ``multipart/alternative`` (text, then HTML), with From, To,
    Subject, Date, a Message-ID derived from the idempotency key, ``X-Request-ID`` (when the
    request ID is sane) and ``X-EventPost-Idempotency-Key``. Raises :class:`InvalidJob`."""
    content = content_of(job)
    msg = EmailMessage()
    msg["From"] = mail_from
    try:
        msg["To"] = Address(addr_spec=job.to)
    except (ValueError, IndexError) as exc:
        raise InvalidJob(f"to is not a valid email address: {exc}") from None
    msg["Subject"] = content.subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id_for(job.idempotency_key, mail_from)
    if request_id and _SAFE_REQUEST_ID.match(request_id):
        msg[REQUEST_ID_HEADER] = request_id
    msg[IDEMPOTENCY_HEADER] = job.idempotency_key
    # RFC 3834: machine-sent mail; keeps auto-responders from answering it.
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(content.text)
    msg.add_alternative(content.html, subtype="html")
    return msg
