"""Pure email building: a message from the broker becomes an email job, a job an email.

Nothing here does I/O (the templates are read from the package once and cached).

Jobs come from three message types (see :mod:`eventpost.contracts`):

- ``user.created`` -> the ``welcome`` template, key ``welcome:<user_id>``.
- ``user.email_added`` -> the ``verification`` template, key
  ``verification:<user_id>:<digest of address and token>`` (the token itself is kept out of
  headers and the delivery log).
- ``email.send`` -> the job as given.

Templates and the ``context`` each one reads (missing required keys make the job invalid):

- ``welcome``: ``username``.
- ``verification``: ``token``; optional ``username``, ``email``, ``expires_at``.
- ``reminder``: ``event`` (the event as the API shows it: ``title``, ``starts_at``, ``place``
  with ``name`` and optional ``address``; optional ``ends_at``, ``description``); optional
  ``message`` (the user's own note) and ``username``.
- ``event_cancelled``: ``event`` as above; optional ``message``, ``username``.

A job without a template carries ``subject`` and ``text`` (and optionally ``html``, which is
sent verbatim: its producer must have escaped it; without it an HTML part is made from the
escaped text). A job's ``subject`` overrides the template's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import cache
from typing import Any

import jinja2
from email_validator import EmailNotValidError, validate_email

from eventpost import contracts
from eventpost.timeutil import parse_time

#: The templates a job may name.
TEMPLATES = ("welcome", "verification", "reminder", "event_cancelled")

IDEMPOTENCY_HEADER = "X-EventPost-Idempotency-Key"
REQUEST_ID_HEADER = "X-Request-ID"

_MAX_KEY = 200
_MAX_SUBJECT = 250
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


class InvalidJob(ValueError):
    """The message cannot become an email; retrying it will not help (it is parked)."""


@dataclass(frozen=True)
class Job:
    """One email to deliver, validated (the ``email.send`` payload, or what a user event
    asks for)."""

    to: str
    idempotency_key: str
    template: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    correlation: Mapping[str, Any] | None = None


# -- from messages to jobs ---------------------------------------------------------------


def _str(payload: Mapping[str, Any], name: str, *, required: bool = True) -> str | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidJob(f"{name} must be a non-empty string")
    return value


def _address(value: str) -> str:
    try:
        # Same rules as the users service, which accepts the special-use .test domain.
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise InvalidJob(f"to is not a valid email address: {exc}") from None


def _key(value: str) -> str:
    if len(value) > _MAX_KEY or _CONTROL.search(value):
        raise InvalidJob(f"idempotency_key must be at most {_MAX_KEY} printable characters")
    return value


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def parse_email_job(payload: Mapping[str, Any]) -> Job:
    """The :class:`Job` in an ``email.send`` payload. Unknown fields are ignored (a newer
    producer may add some). Raises :class:`InvalidJob`."""
    if not isinstance(payload, Mapping):
        raise InvalidJob("an email job must be a JSON object")
    to = _address(_str(payload, "to"))  # type: ignore[arg-type]
    key = _key(_str(payload, "idempotency_key"))  # type: ignore[arg-type]
    template = _str(payload, "template", required=False)
    subject = _str(payload, "subject", required=False)
    text = payload.get("text")
    html = payload.get("html")
    for name, value in (("text", text), ("html", html)):
        if value is not None and not isinstance(value, str):
            raise InvalidJob(f"{name} must be a string")
    context = payload.get("context", {})
    if context is None:
        context = {}
    if not isinstance(context, Mapping):
        raise InvalidJob("context must be an object")
    correlation = payload.get("correlation")
    if correlation is not None and not isinstance(correlation, Mapping):
        raise InvalidJob("correlation must be an object")
    if template is not None:
        if template not in TEMPLATES:
            raise InvalidJob(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    elif subject is None or not text:
        raise InvalidJob("a job without a template needs subject and text")
    return Job(
        to=to,
        idempotency_key=key,
        template=template,
        context=dict(context),
        subject=subject,
        text=text,
        html=html,
        correlation=dict(correlation) if correlation is not None else None,
    )


def job_from_message(message_type: str, payload: Mapping[str, Any]) -> Job:
    """The email job a message asks for. Raises :class:`InvalidJob` for a malformed payload
    or a message type the email-sender does not handle."""
    if not isinstance(payload, Mapping):
        raise InvalidJob("a payload must be a JSON object")
    if message_type == contracts.EMAIL_SEND:
        return parse_email_job(payload)
    if message_type == contracts.USER_CREATED:
        user_id = _str(payload, "user_id")
        username = _str(payload, "username")
        return Job(
            to=_address(_str(payload, "email")),  # type: ignore[arg-type]
            idempotency_key=_key(f"welcome:{user_id}"),
            template="welcome",
            context={"username": username},
        )
    if message_type == contracts.USER_EMAIL_ADDED:
        user_id = _str(payload, "user_id")
        email = _str(payload, "email")
        token = _str(payload, "token")
        return Job(
            to=_address(email),  # type: ignore[arg-type]
            idempotency_key=_key(f"verification:{user_id}:{_digest(email, token)}"),  # type: ignore[arg-type]
            template="verification",
            context={
                "username": payload.get("username"),
                "email": email,
                "token": token,
                "expires_at": payload.get("expires_at"),
            },
        )
    raise InvalidJob(f"the email-sender does not handle {message_type!r} messages")


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


def content_of(job: Job) -> Content:
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
    flat = " ".join(_CONTROL.sub(" ", subject).split())
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
    return f"<{_digest('eventpost', idempotency_key)}.eventpost@{_domain(mail_from)}>"


def envelope_sender(mail_from: str) -> str:
    """The bare address of ``MAIL_FROM`` (``EventPost <a@b>`` -> ``a@b``)."""
    return parseaddr(mail_from)[1] or mail_from


def build_email(
    job: Job,
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
