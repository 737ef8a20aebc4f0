"""The email-sender's side of the message contracts (eventpost.contracts): what producers build
it accepts, what breaks a contract it refuses (parked, not retried), and the outcomes it
publishes are exactly ``email.sent`` / ``email.failed`` payloads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from email_sender.compose import OutgoingEmail
from email_sender.jobs import InvalidJob, job_from_message
from email_sender.mailer import PermanentMailError, TemporaryMailError
from email_sender.sender import EmailSender
from eventpost.contracts import (
    EMAIL_FAILED,
    EMAIL_SENT,
    EmailFailed,
    EmailJob,
    EmailSent,
    UserCreated,
    UserEmailAdded,
)
from eventpost.messaging import Envelope, PermanentError
from eventpost.storage.sqlite import SqliteStore

NOW = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
MAIL_FROM = "EventPost <no-reply@eventpost.test>"
EVENT = {
    "id": "ev1",
    "title": "Python evening",
    "starts_at": "2026-12-01T20:00:00+01:00",
    "place": {"name": "Hall A"},
}

USER_CREATED = UserCreated(user_id="u1", username="ann", email="ann@example.com")
USER_EMAIL_ADDED = UserEmailAdded(
    user_id="u1",
    username="ann",
    email="second@example.com",
    token="tok-123",
    expires_at="2026-12-02T19:00:00Z",
)
REMINDER = EmailJob(
    to="ann@example.com",
    idempotency_key="reminder:n1:v1",
    template="reminder",
    context={"event": EVENT, "message": "Bring a laptop", "username": "ann"},
    correlation={"notification_id": "n1", "version": 1},
)
READY_MADE = EmailJob(to="ann@example.com", idempotency_key="k1", subject="Hello", text="Hi")


def delivered(model: Any) -> Envelope:
    """The envelope of ``model`` as a consumer receives it (through its JSON bytes)."""
    return Envelope.from_bytes(model.envelope("req-1", clock=lambda: NOW).to_bytes())


# -- what producers build is accepted ------------------------------------------------------


def test_user_created_as_users_builds_it_is_a_welcome_job():
    env = delivered(USER_CREATED)
    job = job_from_message(env.type, env.payload)
    assert job.to == "ann@example.com"
    assert job.idempotency_key == "welcome:u1"
    assert job.template == "welcome"
    assert job.context == {"username": "ann"}


def test_user_email_added_as_users_builds_it_is_a_verification_job():
    env = delivered(USER_EMAIL_ADDED)
    job = job_from_message(env.type, env.payload)
    assert job.to == "second@example.com"
    assert job.template == "verification"
    assert job.idempotency_key.startswith("verification:u1:")
    assert "tok-123" not in job.idempotency_key
    assert job.context == {
        "username": "ann",
        "email": "second@example.com",
        "token": "tok-123",
        "expires_at": "2026-12-02T19:00:00Z",
    }


@pytest.mark.parametrize("model", [REMINDER, READY_MADE], ids=["template", "ready-made"])
def test_email_send_as_its_producers_build_it_is_the_same_job(model: EmailJob):
    env = delivered(model)
    assert job_from_message(env.type, env.payload) == model


# -- what breaks a contract is refused -------------------------------------------------------


def _without(model: Any, name: str) -> dict[str, Any]:
    payload = model.to_payload()
    del payload[name]
    return payload


@pytest.mark.parametrize(
    ("model", "name"),
    [
        *((USER_CREATED, name) for name in ("user_id", "username", "email")),
        *(
            (USER_EMAIL_ADDED, name)
            for name in ("user_id", "username", "email", "token", "expires_at")
        ),
        *((REMINDER, name) for name in ("to", "idempotency_key")),
    ],
)
def test_a_payload_missing_a_required_field_is_refused(model: Any, name: str):
    with pytest.raises(InvalidJob, match=name):
        job_from_message(model.TYPE, _without(model, name))


@pytest.mark.parametrize(
    ("model", "name", "value"),
    [
        (USER_CREATED, "user_id", 1),
        (USER_CREATED, "email", ["ann@example.com"]),
        (USER_EMAIL_ADDED, "token", None),
        (USER_EMAIL_ADDED, "expires_at", 1733166000),
        (REMINDER, "to", ["ann@example.com"]),
        (REMINDER, "idempotency_key", 7),
        (REMINDER, "context", []),
        (REMINDER, "correlation", "n1"),
        (READY_MADE, "text", 5),
        (READY_MADE, "subject", True),
    ],
)
def test_a_payload_with_a_wrong_type_is_refused(model: Any, name: str, value: Any):
    with pytest.raises(InvalidJob, match=name):
        job_from_message(model.TYPE, {**model.to_payload(), name: value})


def test_a_refused_payload_is_parked_not_retried(tmp_path):
    sender, _mailer, _outcomes = wired(tmp_path)
    with pytest.raises(PermanentError):
        sender.handle(Envelope.new(USER_CREATED.TYPE, _without(USER_CREATED, "email")))


# -- the outcomes are exactly their contracts -------------------------------------------------


class FakeMailer:
    """Records what it is asked to send; raises ``error`` instead when set."""

    def __init__(self) -> None:
        self.sent: list[OutgoingEmail] = []
        self.error: Exception | None = None

    def send(self, msg: OutgoingEmail, *, sender: str | None = None) -> None:
        if self.error is not None:
            raise self.error
        self.sent.append(msg)

    def close(self) -> None:
        pass


class FakePublisher:
    def __init__(self, outcomes: list[Envelope]) -> None:
        self.outcomes = outcomes

    def publish(self, envelope: Envelope) -> None:
        self.outcomes.append(Envelope.from_bytes(envelope.to_bytes()))

    def close(self) -> None:
        pass


def wired(tmp_path) -> tuple[EmailSender, FakeMailer, list[Envelope]]:
    mailer, outcomes = FakeMailer(), []
    sender = EmailSender(
        mailer=mailer,  # type: ignore[arg-type]
        store_factory=lambda: SqliteStore(tmp_path / "email_sender.sqlite3"),
        publisher_factory=lambda: FakePublisher(outcomes),  # type: ignore[arg-type,return-value]
        mail_from=MAIL_FROM,
        max_attempts=3,
        clock=lambda: NOW,
    )
    return sender, mailer, outcomes


def exact(model: type[EmailSent] | type[EmailFailed], outcome: Envelope) -> Any:
    """The outcome's payload read by its contract: no key missing, none extra, none coerced."""
    assert outcome.type == model.TYPE
    parsed = model.model_validate(outcome.payload)  # extra="forbid", strict
    assert model.parse(outcome.payload) == parsed
    assert parsed.to_payload() == outcome.payload
    return parsed


def test_a_sent_email_is_reported_as_exactly_email_sent(tmp_path):
    sender, mailer, outcomes = wired(tmp_path)
    sender.handle(delivered(REMINDER))
    sender.handle(delivered(REMINDER))  # a redelivered copy: reported again, not sent
    sender.close()
    assert len(mailer.sent) == 1
    assert [o.type for o in outcomes] == [EMAIL_SENT, EMAIL_SENT]
    for outcome in outcomes:
        sent = exact(EmailSent, outcome)
        assert sent.idempotency_key == REMINDER.idempotency_key
        assert sent.correlation == REMINDER.correlation
        assert sent.attempts == 1
        assert sent.message_id == mailer.sent[0].message_id


def test_a_refused_email_is_reported_as_exactly_email_failed(tmp_path):
    sender, mailer, outcomes = wired(tmp_path)
    mailer.error = PermanentMailError("550 5.1.1 no such user", 550)
    with pytest.raises(PermanentError):  # so the consumer parks it, to be replayed
        sender.handle(delivered(REMINDER))
    sender.close()
    [outcome] = outcomes
    failed = exact(EmailFailed, outcome)
    assert failed.error == "550 5.1.1 no such user"
    assert failed.to == REMINDER.to


def test_a_given_up_email_is_reported_as_exactly_email_failed(tmp_path):
    sender, _mailer, outcomes = wired(tmp_path)
    sender.on_exhausted(delivered(REMINDER), TemporaryMailError("421 try later", 421))
    invalid = {**REMINDER.to_payload(), "to": "not-an-address", "idempotency_key": "bad-1"}
    sender.on_exhausted(
        Envelope.new(EmailJob.TYPE, invalid), PermanentError("to is not a valid email address")
    )
    sender.close()
    assert [o.type for o in outcomes] == [EMAIL_FAILED, EMAIL_FAILED]
    gave_up, refused = (exact(EmailFailed, o) for o in outcomes)
    assert (gave_up.attempts, gave_up.error) == (3, "421 try later")
    assert (refused.to, refused.idempotency_key) == ("not-an-address", "bad-1")
