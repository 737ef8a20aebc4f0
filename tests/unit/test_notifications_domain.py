"""Reminder rules (services.notifications.domain): durations, times, addresses, changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from eventpost.errors import Invalid
from services.notifications import domain

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
EVENT = {
    "id": "ev1",
    "title": "Jazz night",
    "starts_at": "2026-12-01T20:00:00+01:00",
    "ends_at": "2026-12-01T23:00:00+01:00",
    "place": {"name": "Blue Room", "address": "1 Main St", "lat": 1.0, "lng": 2.0},
    "updated_at": "2026-10-01T00:00:00.000000Z",
}
USER = {
    "id": "u1",
    "email": "Ann@Example.test",
    "secondary_emails": [
        {"email": "work@example.test", "verified": True},
        {"email": "new@example.test", "verified": False},
    ],
}


def make(**overrides):
    args = {
        "reminder_id": "n1",
        "owner": "u1",
        "event_id": "ev1",
        "event": EVENT,
        "user": USER,
        "send_at": None,
        "before": timedelta(hours=2),
        "email": None,
        "subject": None,
        "message": None,
        "now": NOW,
        "request_id": "rid-1",
    }
    args.update(overrides)
    return domain.new_reminder(**args)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT2H", timedelta(hours=2)),
        ("P1D", timedelta(days=1)),
        ("P1DT12H", timedelta(days=1, hours=12)),
        ("PT90M", timedelta(minutes=90)),
        ("PT5S", timedelta(seconds=5)),
        ("PT0.5S", timedelta(seconds=0.5)),
        ("P2W", timedelta(weeks=2)),
        ("pt2h", timedelta(hours=2)),
        ("PT0S", timedelta(0)),
    ],
)
def test_iso_durations_parse(text, expected):
    assert domain.parse_duration(text, "before") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-PT2H", "negative"),
        ("P1Y", "years and months"),
        ("P2M", "years and months"),
        ("P1Y2DT3H", "years and months"),
        ("2 hours", "ISO 8601"),
        ("P", "ISO 8601"),
        ("PT", "ISO 8601"),
        ("P1DT", "ISO 8601"),
        ("PT1H30", "ISO 8601"),
        ("", "ISO 8601"),
        ("P5000D", "too long"),
        # Digits of other scripts (found comparing the code with the OpenAPI pattern).
        ("PT\u0662H", "ISO 8601"),
        ("P\uff11D", "ISO 8601"),
    ],
)
def test_bad_durations_are_refused(text, message):
    with pytest.raises(Invalid) as err:
        domain.parse_duration(text, "delay")
    assert err.value.field == "delay"
    assert message in err.value.detail


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (timedelta(hours=2), "PT2H"),
        (timedelta(days=1), "P1D"),
        (timedelta(minutes=90), "PT1H30M"),
        (timedelta(days=1, seconds=5), "P1DT5S"),
        (timedelta(seconds=1.25), "PT1.25S"),
        (timedelta(0), "PT0S"),
    ],
)
def test_durations_format_canonically(duration, text):
    assert domain.format_duration(duration) == text
    assert domain.parse_duration(text, "x") == duration


def test_a_before_reminder_is_set_relative_to_the_start():
    doc = make()
    assert doc["send_at"] == "2026-12-01T17:00:00.000000Z"  # 20:00+01:00 - 2h
    assert doc["before"] == "PT2H"
    assert doc["status"] == "scheduled"
    assert doc["email"] == "Ann@Example.test"  # the primary by default
    assert doc["subject"] == "Reminder: Jazz night"
    assert doc["event"]["place"] == {"name": "Blue Room", "address": "1 Main St"}
    assert doc["lease_until"] == domain.NO_LEASE
    assert doc["request_id"] == "rid-1"


def test_an_absolute_reminder_keeps_its_time():
    doc = make(before=None, send_at="2026-11-20T10:00:00.000000Z", subject="Tickets!")
    assert doc["send_at"] == "2026-11-20T10:00:00.000000Z"
    assert doc["before"] is None
    assert doc["subject"] == "Tickets!"
    assert doc["subject_is_default"] is False


def test_exactly_one_of_send_at_and_before():
    with pytest.raises(Invalid):
        make(before=None)
    with pytest.raises(Invalid):
        make(send_at="2026-11-20T10:00:00.000000Z")


def test_past_times_are_refused():
    with pytest.raises(Invalid) as err:
        make(before=None, send_at="2026-11-01T11:59:59.000000Z")
    assert err.value.field == "send_at"
    with pytest.raises(Invalid) as err:
        make(before=timedelta(days=40))  # before the event minus 40 days is in the past
    assert err.value.field == "before"


def test_only_verified_addresses_of_the_caller():
    assert make(email="work@example.test")["email"] == "work@example.test"
    assert make(email="ann@example.TEST")["email"] == "Ann@Example.test"
    for address in ("new@example.test", "someone@else.test"):
        with pytest.raises(Invalid) as err:
            make(email=address)
        assert err.value.field == "email"


def test_subject_must_be_one_line():
    with pytest.raises(Invalid):
        make(subject="Hi\r\nBcc: x@y.z")
    with pytest.raises(Invalid):
        make(subject="   ")


def test_patch_send_at_makes_it_absolute():
    doc = {**make(), "version": 2, "lease_owner": "d1", "lease_until": "2999-01-01T00:00:00Z"}
    changes = domain.reminder_changes(
        doc, {"send_at": "2026-11-10T00:00:00.000000Z"}, now=NOW, request_id="rid-2"
    )
    assert changes["send_at"] == "2026-11-10T00:00:00.000000Z"
    assert changes["before"] is None and changes["before_seconds"] is None
    # any change releases a dispatcher's lease
    assert changes["lease_until"] == domain.NO_LEASE and changes["lease_owner"] is None
    assert changes["request_id"] == "rid-2"


def test_patch_delay_shifts_and_keeps_following_while_it_can():
    doc = make()
    changes = domain.reminder_changes(doc, {"delay": timedelta(minutes=30)}, now=NOW)
    assert changes["send_at"] == "2026-12-01T17:30:00.000000Z"
    assert changes["before"] == "PT1H30M"
    changes = domain.reminder_changes(doc, {"delay": timedelta(hours=3)}, now=NOW)
    assert changes["send_at"] == "2026-12-01T20:00:00.000000Z"
    assert changes["before"] is None  # past the start: no longer follows the event


def test_patch_before_uses_the_fresh_event():
    doc = make(before=None, send_at="2026-11-20T10:00:00.000000Z")
    moved = {**EVENT, "starts_at": "2026-12-02T20:00:00Z", "title": "Jazz night (moved)"}
    changes = domain.reminder_changes(doc, {"before": timedelta(days=1)}, now=NOW, event=moved)
    assert changes["send_at"] == "2026-12-01T20:00:00.000000Z"
    assert changes["before"] == "P1D"
    assert changes["subject"] == "Reminder: Jazz night (moved)"  # default subject follows


def test_patch_refuses_two_times_and_non_scheduled():
    doc = make()
    with pytest.raises(Invalid):
        domain.reminder_changes(
            doc, {"send_at": "2026-11-10T00:00:00Z", "delay": timedelta(1)}, now=NOW
        )
    for status in ("sending", "sent", "failed", "cancelled"):
        with pytest.raises(domain.NotChangeable):
            domain.reminder_changes({**doc, "status": status}, {"message": "x"}, now=NOW)


def test_follow_event_moves_before_style_only():
    relative = make()
    absolute = make(before=None, send_at="2026-11-20T10:00:00.000000Z")
    moved = {**EVENT, "starts_at": "2026-12-03T20:00:00Z", "updated_at": "2026-10-02T00:00:00Z"}
    changes = domain.follow_event(relative, moved, NOW)
    assert changes["send_at"] == "2026-12-03T18:00:00.000000Z"
    assert changes["event"]["starts_at"] == "2026-12-03T20:00:00.000000Z"
    changes = domain.follow_event(absolute, moved, NOW)
    assert "send_at" not in changes
    assert changes["event"]["starts_at"] == "2026-12-03T20:00:00.000000Z"
    # applied twice: nothing more
    assert (
        domain.follow_event({**relative, **domain.follow_event(relative, moved, NOW)}, moved, NOW)
        is None
    )


def test_follow_event_ignores_older_copies_and_finished_reminders():
    doc = make()
    older = {**EVENT, "starts_at": "2026-12-05T20:00:00Z", "updated_at": "2026-09-01T00:00:00Z"}
    assert domain.follow_event(doc, older, NOW) is None
    moved = {**EVENT, "starts_at": "2026-12-05T20:00:00Z", "updated_at": "2026-10-05T00:00:00Z"}
    assert domain.follow_event({**doc, "status": "sending"}, moved, NOW) is None


def test_reminder_job_names_event_start_and_place():
    doc = make(message="Buy tickets")
    job = domain.reminder_job(doc, 3).to_payload()
    assert job["to"] == "Ann@Example.test"
    assert job["idempotency_key"] == "reminder:n1:v3"
    assert job["template"] == "reminder"
    assert job["subject"] == "Reminder: Jazz night"
    assert job["correlation"] == {"notification_id": "n1", "version": 3}
    event = job["context"]["event"]
    assert event["title"] == "Jazz night"
    assert event["starts_at"] == "2026-12-01T19:00:00.000000Z"
    assert event["place"] == {"name": "Blue Room", "address": "1 Main St"}
    assert job["context"]["message"] == "Buy tickets"


def test_cancelled_job_has_a_key_per_reminder():
    job = domain.cancelled_job(make(), EVENT).to_payload()
    assert job["template"] == "event_cancelled"
    assert job["idempotency_key"] == "event_cancelled:n1"
    assert "correlation" not in job
    assert job["context"]["event"]["title"] == "Jazz night"


def test_public_view_has_exactly_the_api_fields():
    view = domain.public_view({**make(), "version": 1})
    assert set(view) == {
        "id",
        "event_id",
        "email",
        "subject",
        "message",
        "send_at",
        "before",
        "status",
        "attempts",
        "sent_at",
        "last_error",
        "created_at",
        "updated_at",
    }
