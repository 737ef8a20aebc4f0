"""The notifications service's email jobs against the ``email.send`` contract: the real
producers (a dispatcher round and the ``event.deleted`` cancellation, over a real SqliteStore)
put into the outbox payloads that are EXACTLY :class:`eventpost.contracts.EmailJob` (no key
it does not know, every type as declared) and that the email-sender's reading accepts."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from eventpost import contracts
from eventpost.contracts import EmailJob
from eventpost.messaging import Envelope
from eventpost.storage.sqlite import SqliteStore
from eventpost.timeutil import format_time
from services.notifications import domain
from services.notifications.consumers import NotificationHandlers
from services.notifications.dispatcher import ReminderDispatcher
from services.notifications.store import NotificationsStore
from tests.unit.test_notifications_domain import EVENT, USER
from tests.unit.test_notifications_support import Clock


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "notifications.sqlite3", synchronous="NORMAL")
    yield s
    s.close()


def add(store, clock, rid: str, *, in_seconds: float, message: str | None = None, event=EVENT):
    doc = domain.new_reminder(
        reminder_id=rid,
        owner="u1",
        event_id=event["id"],
        event=event,
        user=USER,
        send_at=format_time(clock() + timedelta(seconds=in_seconds)),
        before=None,
        email=None,
        subject=None,
        message=message,
        now=clock(),
        request_id=f"rid-{rid}",
    )
    NotificationsStore(store).insert(doc)


def email_jobs(store) -> list[dict]:
    jobs = [e for e in store.iter_outbox() if e["type"] == contracts.EMAIL_SEND]
    assert jobs
    return [job["payload"] for job in jobs]


def assert_exactly_an_email_job(payload: dict) -> EmailJob:
    job = EmailJob.model_validate(payload)  # extra keys and loose types are refused
    assert set(payload) <= set(EmailJob.model_fields)
    assert job.to_payload() == payload
    assert EmailJob.parse(payload) == job  # what the email-sender reads
    return job


def test_dispatched_reminder_jobs_are_exactly_email_jobs(store):
    clock = Clock()
    add(store, clock, "plain", in_seconds=1)
    add(store, clock, "noted", in_seconds=2, message="Bring the tickets")
    no_end = {**EVENT, "id": "ev2", "ends_at": None, "place": {"name": None}}
    add(store, clock, "open-ended", in_seconds=3, event=no_end)
    clock.advance(seconds=3)
    assert ReminderDispatcher(store, clock=clock).run_once() == 3
    payloads = email_jobs(store)
    assert len(payloads) == 3
    for payload in payloads:
        job = assert_exactly_an_email_job(payload)
        assert job.template == domain.REMINDER_TEMPLATE
        assert job.correlation is not None
        assert job.idempotency_key == domain.reminder_key(
            job.correlation["notification_id"], job.correlation["version"]
        )


@pytest.mark.parametrize("with_event", [True, False])
def test_cancellation_jobs_are_exactly_email_jobs(store, with_event):
    clock = Clock()
    add(store, clock, "a", in_seconds=3600)
    add(store, clock, "b", in_seconds=7200, message="see you")
    payload = {"event_id": EVENT["id"], "event": EVENT if with_event else {}}
    envelope = Envelope.new(contracts.EVENT_DELETED, payload, request_id="admin")
    NotificationHandlers(store, clock=clock).on_event_change(envelope)
    payloads = email_jobs(store)
    assert sorted(p["idempotency_key"] for p in payloads) == [
        "event_cancelled:a",
        "event_cancelled:b",
    ]
    for payload in payloads:
        job = assert_exactly_an_email_job(payload)
        assert job.template == domain.CANCELLED_TEMPLATE
        assert job.correlation is None
