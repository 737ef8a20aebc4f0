"""Messages become email jobs: what the email-sender reads in its three input types.

A job is an :class:`eventpost.contracts.EmailJob`. Each payload is read through its contract
(:mod:`eventpost.contracts`), then checked for what the email-sender needs on top of it (a
valid address, a known template, a bounded key):

- ``user.created`` (:class:`~eventpost.contracts.UserCreated`) -> the ``welcome`` template,
  key ``welcome:<user_id>``.
- ``user.email_added`` (:class:`~eventpost.contracts.UserEmailAdded`) -> the ``verification``
  template, key ``verification:<user_id>:<digest of address and token>`` (the token itself
  is kept out of headers and the delivery log).
- ``email.send`` (:class:`~eventpost.contracts.EmailJob`) -> the job as given.

A message that cannot become a job raises :class:`InvalidJob`: retrying it will not help.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from email_validator import EmailNotValidError, validate_email

from eventpost import contracts
from eventpost.contracts import EmailJob, MalformedPayload, UserCreated, UserEmailAdded

#: The templates a job may name.
TEMPLATES = ("welcome", "verification", "reminder", "event_cancelled")
#: Control characters, kept out of keys and headers.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")

_MAX_KEY = 200

_Model = TypeVar("_Model", bound=contracts.Payload)


class InvalidJob(ValueError):
    """The message cannot become an email; retrying it will not help (it is parked)."""


def digest(*parts: str) -> str:
    """A short stable digest of ``parts`` (for keys and Message-IDs)."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def _read(model: type[_Model], payload: Mapping[str, Any], *filled: str) -> _Model:
    """``payload`` through ``model``'s contract; the fields named in ``filled`` must not be
    blank."""
    try:
        parsed = model.parse(payload)
    except MalformedPayload as exc:
        raise InvalidJob(str(exc)) from None
    for name in filled:
        _filled(name, getattr(parsed, name))
    return parsed


def _filled(name: str, value: str | None) -> None:
    if value is not None and not value.strip():
        raise InvalidJob(f"{name} must be a non-empty string")


def _address(value: str) -> str:
    _filled("to", value)
    try:
        # Same rules as the users service, which accepts the special-use .test domain.
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise InvalidJob(f"to is not a valid email address: {exc}") from None


def _key(value: str) -> str:
    _filled("idempotency_key", value)
    if len(value) > _MAX_KEY or CONTROL_CHARACTERS.search(value):
        raise InvalidJob(f"idempotency_key must be at most {_MAX_KEY} printable characters")
    return value


def parse_email_job(payload: Mapping[str, Any]) -> EmailJob:
    """The job in an ``email.send`` payload (address normalised). Unknown fields are ignored
    (a newer producer may add some). Raises :class:`InvalidJob`."""
    if not isinstance(payload, Mapping):
        raise InvalidJob("an email job must be a JSON object")
    job = _read(EmailJob, payload, "template", "subject")
    to = _address(job.to)
    _key(job.idempotency_key)
    if job.template is not None:
        if job.template not in TEMPLATES:
            raise InvalidJob(f"unknown template {job.template!r}; known: {', '.join(TEMPLATES)}")
    elif job.subject is None or not job.text:
        raise InvalidJob("a job without a template needs subject and text")
    return job.model_copy(update={"to": to})


def job_from_message(message_type: str, payload: Mapping[str, Any]) -> EmailJob:
    """The email job a message asks for. Raises :class:`InvalidJob` for a malformed payload
    or a message type the email-sender does not handle."""
    if not isinstance(payload, Mapping):
        raise InvalidJob("a payload must be a JSON object")
    if message_type == contracts.EMAIL_SEND:
        return parse_email_job(payload)
    if message_type == contracts.USER_CREATED:
        user = _read(UserCreated, payload, "user_id", "username", "email")
        return _job_for_user(user, f"welcome:{user.user_id}", "welcome", username=user.username)
    if message_type == contracts.USER_EMAIL_ADDED:
        added = _read(UserEmailAdded, payload, "user_id", "email", "token")
        return _job_for_user(
            added,
            f"verification:{added.user_id}:{digest(added.email, added.token)}",
            "verification",
            username=added.username,
            email=added.email,
            token=added.token,
            expires_at=added.expires_at,
        )
    raise InvalidJob(f"the email-sender does not handle {message_type!r} messages")


def _job_for_user(
    user: UserCreated | UserEmailAdded, key: str, template: str, **context: Any
) -> EmailJob:
    return EmailJob(
        to=_address(user.email), idempotency_key=_key(key), template=template, context=context
    )
