"""The messages EventPost's parts exchange over RabbitMQ: routing keys and typed payloads.

Every message is an :class:`eventpost.messaging.Envelope` (id, type, occurred_at, request_id,
payload) published on the topic exchange ``eventpost`` with the type as routing key. Events
are past tense (something happened); ``email.send`` is a command. Consumers must be
idempotent: a message can arrive more than once.

Each payload is a :class:`Payload` model. Producers build one and put ``to_payload()`` in the
envelope (:meth:`Payload.envelope` does both); consumers read theirs with
:meth:`Payload.parse`, which raises :class:`MalformedPayload` for a payload that breaks the
contract. Building is exact (an unknown field is an error: a producer's typo fails at once);
parsing is tolerant of fields it does not know (a newer producer may add some) and strict
about the rest (no coercion: ``"1"`` is not an int).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from eventpost.messaging.envelope import Envelope

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


class MalformedPayload(ValueError):
    """A payload that does not satisfy its message type's contract."""


class Payload(BaseModel):
    """The payload of one message type (``TYPE``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    TYPE: ClassVar[str]

    def to_payload(self) -> dict[str, Any]:
        """The JSON object that travels in the envelope (unset optional fields left out)."""
        return self.model_dump(mode="json", exclude_none=True)

    def envelope(self, request_id: str | None = None, **options: Any) -> Envelope:
        """A new envelope of this payload's type carrying it (``options``: ``clock``,
        ``id_factory``, as :meth:`Envelope.new` takes them)."""
        from eventpost.messaging.envelope import Envelope

        return Envelope.new(self.TYPE, self.to_payload(), request_id=request_id, **options)

    @classmethod
    def parse(cls, payload: object) -> Self:
        """The payload as this model; fields the model does not know are ignored. Raises
        :class:`MalformedPayload`."""
        if not isinstance(payload, Mapping):
            raise MalformedPayload(f"a {cls.TYPE} payload must be a JSON object")
        known = {k: v for k, v in payload.items() if k in cls.model_fields}
        try:
            return cls.model_validate(known)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}"
                for e in exc.errors()
            )
            raise MalformedPayload(f"{cls.TYPE}: {problems}") from None


class UserCreated(Payload):
    """``user.created``: the email-sender sends the welcome email to ``email``."""

    TYPE: ClassVar[str] = USER_CREATED
    user_id: str
    username: str
    email: str


class UserEmailAdded(Payload):
    """``user.email_added``: the email-sender sends a verification email to ``email`` whose
    plain-text part holds the line ``Verification token: <token>``."""

    TYPE: ClassVar[str] = USER_EMAIL_ADDED
    user_id: str
    username: str
    email: str
    token: str
    expires_at: str


class UserDeleted(Payload):
    """``user.deleted``: notifications deletes every reminder of ``user_id``."""

    TYPE: ClassVar[str] = USER_DELETED
    user_id: str


class EventCreated(Payload):
    """``event.created``: the whole event as the API shows it."""

    TYPE: ClassVar[str] = EVENT_CREATED
    event: dict[str, Any]


class EventUpdated(Payload):
    """``event.updated``: the whole event as the API shows it after the change, and its
    start before the change, so reminders set with ``before`` can follow."""

    TYPE: ClassVar[str] = EVENT_UPDATED
    event: dict[str, Any]
    old_starts_at: str | None = None


class EventDeleted(Payload):
    """``event.deleted``: notifications cancels the event's reminders and tells the owners."""

    TYPE: ClassVar[str] = EVENT_DELETED
    event_id: str
    event: dict[str, Any]


class EmailJob(Payload):
    """``email.send``: one email to deliver.

    Either ``template`` (``reminder``, ``event_cancelled``, ``welcome``, ``verification``)
    with its ``context``, or ready ``subject`` + ``text`` (+ optional ``html``). ``subject``,
    when given, overrides the template's. ``idempotency_key`` is the same for every copy of
    the same logical email (e.g. ``reminder:<id>:v<version>``), so a redelivered job is
    not sent twice. When ``correlation`` is present, the outcome is published back as
    ``email.sent`` / ``email.failed`` carrying it unchanged."""

    TYPE: ClassVar[str] = EMAIL_SEND
    to: str
    idempotency_key: str
    template: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    correlation: dict[str, Any] | None = None


class EmailOutcome(Payload):
    """What became of an ``email.send`` job that carried a ``correlation`` (which comes back
    unchanged), after ``attempts`` tries."""

    idempotency_key: str
    to: str
    correlation: dict[str, Any]
    attempts: int


class EmailSent(EmailOutcome):
    """``email.sent``: the job was accepted by the SMTP server."""

    TYPE: ClassVar[str] = EMAIL_SENT
    message_id: str
    sent_at: str


class EmailFailed(EmailOutcome):
    """``email.failed``: the job can never be delivered (or ran out of tries)."""

    TYPE: ClassVar[str] = EMAIL_FAILED
    error: str


#: The payload model of every message type.
PAYLOADS: dict[str, type[Payload]] = {
    model.TYPE: model
    for model in (
        UserCreated,
        UserEmailAdded,
        UserDeleted,
        EventCreated,
        EventUpdated,
        EventDeleted,
        EmailJob,
        EmailSent,
        EmailFailed,
    )
}


def parse_payload(message_type: str, payload: object) -> Payload:
    """The payload of a message of ``message_type`` as its model. Raises
    :class:`MalformedPayload` (also for a type without a contract)."""
    model = PAYLOADS.get(message_type)
    if model is None:
        raise MalformedPayload(f"no contract for message type {message_type!r}")
    return model.parse(payload)
