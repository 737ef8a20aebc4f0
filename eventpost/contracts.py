"""The messages EventPost's parts exchange over RabbitMQ: routing keys and payloads.

Every message is an :class:`eventpost.messaging.Envelope` (id, type, occurred_at, request_id,
payload) published on the topic exchange ``eventpost`` with the type as routing key. Events
are past tense (something happened); ``email.send`` is a command. Consumers must be
idempotent: a message can arrive more than once.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

USER_CREATED = "user.created"
USER_EMAIL_ADDED = "user.email_added"
USER_DELETED = "user.deleted"
EVENT_CREATED = "event.created"
EVENT_UPDATED = "event.updated"
EVENT_DELETED = "event.deleted"
EMAIL_SEND = "email.send"
EMAIL_SENT = "email.sent"
EMAIL_FAILED = "email.failed"

#: Every consumer queue of the suite and the message types bound to it. Relays declare these
#: (idempotently: durable queues without arguments, the same as the consumers declare) before
#: they publish, so a message published before its consumer ever started waits in its queue
#: instead of coming back unroutable. A type bound to no queue here (``event.created``) has no
#: consumer yet: publishing it is logged and it is dropped.
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "email-sender.jobs": (USER_CREATED, USER_EMAIL_ADDED, EMAIL_SEND),
    "notifications.email-outcomes": (EMAIL_SENT, EMAIL_FAILED),
    "notifications.event-changes": (EVENT_UPDATED, EVENT_DELETED),
    "notifications.user-deleted": (USER_DELETED,),
}


class UserCreated(TypedDict):
    """``user.created``: the email-sender sends the welcome email to ``email``."""

    user_id: str
    username: str
    email: str


class UserEmailAdded(TypedDict):
    """``user.email_added``: the email-sender sends a verification email to ``email`` whose
    plain-text part holds the line ``Verification token: <token>``."""

    user_id: str
    username: str
    email: str
    token: str
    expires_at: str


class UserDeleted(TypedDict):
    """``user.deleted``: notifications deletes every reminder of ``user_id``."""

    user_id: str


class EventChanged(TypedDict):
    """``event.created`` / ``event.updated``: the whole event as the API shows it; on
    ``event.updated`` also the start before the change, so reminders set with ``before``
    can follow."""

    event: dict[str, Any]
    old_starts_at: NotRequired[str]


class EventDeleted(TypedDict):
    """``event.deleted``: notifications cancels the event's reminders and tells the owners."""

    event_id: str
    event: dict[str, Any]


class EmailJob(TypedDict):
    """``email.send``: one email to deliver.

    Either ``template`` (``reminder``, ``event_cancelled``, ``welcome``, ``verification``)
    with its ``context``, or ready ``subject`` + ``text`` (+ optional ``html``). ``subject``,
    when given, overrides the template's. ``idempotency_key`` is the same for every copy of
    the same logical email (e.g. ``reminder:<id>:v<version>``), so a redelivered job is
    not sent twice. When ``correlation`` is present, the outcome is published back as
    ``email.sent`` / ``email.failed`` carrying it unchanged."""

    to: str
    idempotency_key: str
    template: NotRequired[str]
    context: NotRequired[dict[str, Any]]
    subject: NotRequired[str]
    text: NotRequired[str]
    html: NotRequired[str]
    correlation: NotRequired[dict[str, Any]]


class EmailOutcome(TypedDict):
    """``email.sent`` / ``email.failed``: what became of an ``email.send`` job."""

    idempotency_key: str
    to: str
    correlation: dict[str, Any]
    attempts: int
    message_id: NotRequired[str]
    sent_at: NotRequired[str]
    error: NotRequired[str]
