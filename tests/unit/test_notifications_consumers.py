"""Message handlers of the notifications service over a real SqliteStore: each outcome and
domain event does its work once, and a redelivery changes nothing more."""

from __future__ import annotations

from datetime import timedelta

import pytest

from eventpost.messaging import Envelope, PermanentError
from eventpost.timeutil import format_time
from services.notifications import domain
from services.notifications.consumers import NotificationHandlers
from services.notifications.dispatcher import ReminderDispatcher
from services.notifications.store import NotificationsStore
from tests.unit.test_notifications_domain import EVENT, USER
from tests.unit.test_notifications_support import Clock, any_store  # noqa: F401


@pytest.fixture
def store(any_store):  # noqa: F811
    return any_store


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def handlers(store, clock):
    return NotificationHandlers(store, clock=clock)


def reminder(
    store, clock, rid, *, before=timedelta(hours=2), send_at=None, owner="u1", event=EVENT
):
    doc = domain.new_reminder(
        reminder_id=rid,
        owner=owner,
        event_id=event["id"],
        event=event,
        user=USER,
        send_at=send_at,
        before=before if send_at is None else None,
        email=None,
        subject=None,
        message=None,
        now=clock(),
        request_id="rid",
    )
    return NotificationsStore(store).collection.insert(doc)


def deliver(handler, type_, payload, request_id="msg-rid"):
    envelope = Envelope.new(type_, payload, request_id=request_id)
    handler(envelope)
    return envelope


def sending(store, clock, rid):
    """A reminder the dispatcher has handed over; returns its sending version."""
    doc = reminder(store, clock, rid, send_at=format_time(clock() + timedelta(seconds=1)))
    clock.advance(seconds=1)
    ReminderDispatcher(store, clock=clock).run_once()
    sent = NotificationsStore(store).collection.get(doc["id"])
    assert sent["status"] == "sending"
    return sent["version"]


def outcome(rid, version, **extra):
    return {
        "idempotency_key": f"reminder:{rid}:v{version}",
        "to": USER["email"],
        "correlation": {"notification_id": rid, "version": version},
        "attempts": 1,
        **extra,
    }


def sent(rid, version, **extra):
    """An ``email.sent`` payload as the contract has it (message id and time included)."""
    return outcome(
        rid, version, **{"message_id": "<m@x>", "sent_at": "2026-11-01T12:00:01Z", **extra}
    )


def test_email_sent_marks_sent_once(store, clock, handlers):
    version = sending(store, clock, "n1")
    msg = deliver(
        handlers.on_email_outcome,
        "email.sent",
        sent("n1", version, sent_at="2026-11-01T12:00:00.500000Z"),
    )
    doc = NotificationsStore(store).collection.get("n1")
    assert doc["status"] == "sent"
    assert doc["sent_at"] == "2026-11-01T12:00:00.500000Z"
    assert doc["attempts"] == 1
    handlers.on_email_outcome(msg)  # redelivery
    assert NotificationsStore(store).collection.get("n1") == doc


def test_email_failed_records_the_error(store, clock, handlers):
    version = sending(store, clock, "n1")
    deliver(
        handlers.on_email_outcome,
        "email.failed",
        outcome("n1", version, attempts=4, error="550 mailbox unavailable"),
    )
    doc = NotificationsStore(store).collection.get("n1")
    assert (doc["status"], doc["attempts"], doc["last_error"]) == (
        "failed",
        4,
        "550 mailbox unavailable",
    )
    # a "failed" again changes nothing; a "sent" of another job neither
    deliver(handlers.on_email_outcome, "email.failed", outcome("n1", version, error="again"))
    deliver(handlers.on_email_outcome, "email.sent", sent("n1", version - 1))
    assert NotificationsStore(store).collection.get("n1")["last_error"] == "550 mailbox unavailable"
    assert NotificationsStore(store).collection.get("n1")["status"] == "failed"
    # the same job replayed from the parking queue once fixed, and sent: the reminder is sent
    deliver(handlers.on_email_outcome, "email.sent", sent("n1", version))
    doc = NotificationsStore(store).collection.get("n1")
    assert (doc["status"], doc["last_error"]) == ("sent", None)
    deliver(handlers.on_email_outcome, "email.sent", sent("n1", version))  # redelivery
    assert NotificationsStore(store).collection.get("n1") == doc


def test_outcomes_of_other_versions_or_jobs_are_ignored(store, clock, handlers):
    version = sending(store, clock, "n1")
    before = NotificationsStore(store).collection.get("n1")
    deliver(handlers.on_email_outcome, "email.sent", sent("n1", version - 1))
    deliver(handlers.on_email_outcome, "email.sent", sent("gone", 3))
    welcome = {**sent("u1", 1), "idempotency_key": "welcome:u1", "correlation": {}}
    deliver(handlers.on_email_outcome, "email.sent", welcome)
    assert NotificationsStore(store).collection.get("n1") == before
    with pytest.raises(PermanentError):
        deliver(
            handlers.on_email_outcome,
            "email.sent",
            {**sent("n1", version), "correlation": {"notification_id": "n1", "version": "x"}},
        )


def test_event_updated_moves_before_style_reminders_only(store, clock, handlers):
    relative = reminder(store, clock, "rel")
    absolute = reminder(store, clock, "abs", send_at="2026-11-20T10:00:00.000000Z")
    other = reminder(store, clock, "other", event={**EVENT, "id": "ev2"})
    moved = {
        **EVENT,
        "starts_at": "2026-12-03T20:00:00Z",
        "title": "Jazz night (moved)",
        "updated_at": "2026-10-02T00:00:00.000000Z",
    }
    msg = deliver(
        handlers.on_event_change,
        "event.updated",
        {"event": moved, "old_starts_at": EVENT["starts_at"]},
    )
    coll = NotificationsStore(store).collection
    rel, abs_ = coll.get("rel"), coll.get("abs")
    assert rel["send_at"] == "2026-12-03T18:00:00.000000Z"
    assert rel["subject"] == "Reminder: Jazz night (moved)"
    assert abs_["send_at"] == absolute["send_at"]
    assert abs_["event"]["starts_at"] == "2026-12-03T20:00:00.000000Z"
    assert coll.get("other") == other
    handlers.on_event_change(msg)  # redelivery: nothing more
    assert coll.get("rel") == rel and coll.get("abs") == abs_
    # a late copy of an older change is ignored
    deliver(handlers.on_event_change, "event.updated", {"event": EVENT})
    assert coll.get("rel") == rel
    assert relative["version"] < rel["version"]


def test_event_updated_leaves_sent_reminders_alone(store, clock, handlers):
    version = sending(store, clock, "n1")
    moved = {**EVENT, "starts_at": "2026-12-09T20:00:00Z", "updated_at": "2026-10-05T00:00:00Z"}
    deliver(handlers.on_event_change, "event.updated", {"event": moved})
    assert NotificationsStore(store).collection.get("n1")["version"] == version


def test_event_deleted_cancels_and_tells_each_owner_once(store, clock, handlers):
    reminder(store, clock, "a1", owner="a")
    reminder(store, clock, "b1", owner="b")
    sending(store, clock, "s1")  # already on its way: left alone
    jobs_before = len(list(store.iter_outbox()))
    msg = deliver(
        handlers.on_event_change,
        "event.deleted",
        {"event_id": EVENT["id"], "event": EVENT},
        request_id="admin-delete",
    )
    coll = NotificationsStore(store).collection
    assert coll.get("a1")["status"] == coll.get("b1")["status"] == "cancelled"
    assert coll.get("s1")["status"] == "sending"
    jobs = list(store.iter_outbox())[jobs_before:]
    assert sorted(j["payload"]["idempotency_key"] for j in jobs) == [
        "event_cancelled:a1",
        "event_cancelled:b1",
    ]
    assert {j["payload"]["template"] for j in jobs} == {"event_cancelled"}
    assert {j["request_id"] for j in jobs} == {"admin-delete"}
    handlers.on_event_change(msg)
    assert len(list(store.iter_outbox())) == jobs_before + 2
    # a cancelled reminder is never dispatched
    clock.advance(days=40)
    ReminderDispatcher(store, clock=clock).run_once()
    assert coll.get("a1")["status"] == "cancelled"
    assert len(list(store.iter_outbox())) == jobs_before + 2


def test_user_deleted_removes_that_users_reminders(store, clock, handlers):
    reminder(store, clock, "a1", owner="a")
    reminder(store, clock, "a2", owner="a")
    reminder(store, clock, "b1", owner="b")
    msg = deliver(handlers.on_user_deleted, "user.deleted", {"user_id": "a"})
    handlers.on_user_deleted(msg)
    coll = NotificationsStore(store).collection
    assert coll.get("a1") is None and coll.get("a2") is None
    assert coll.get("b1") is not None
    with pytest.raises(PermanentError):
        deliver(handlers.on_user_deleted, "user.deleted", {})


@pytest.mark.parametrize(
    ("handler", "type_", "payload"),
    [
        ("on_email_outcome", "email.sent", {"correlation": {"notification_id": "n1"}}),
        ("on_email_outcome", "email.failed", {**outcome("n1", 2), "error": 550}),
        ("on_event_change", "event.updated", {"event": "not an object"}),
        ("on_event_change", "event.updated", {"event": {"title": "no id"}}),
        ("on_event_change", "event.deleted", {"event": EVENT}),
        ("on_event_change", "event.deleted", {"event_id": 7, "event": EVENT}),
        ("on_user_deleted", "user.deleted", {"user_id": 7}),
        ("on_user_deleted", "user.deleted", {"user_id": ""}),
    ],
)
def test_payloads_that_break_their_contract_are_permanent_errors(
    store, clock, handlers, handler, type_, payload
):
    version = sending(store, clock, "n1")
    before = NotificationsStore(store).collection.get("n1")
    with pytest.raises(PermanentError):
        deliver(getattr(handlers, handler), type_, payload)
    assert NotificationsStore(store).collection.get("n1") == before
    assert before["version"] == version
