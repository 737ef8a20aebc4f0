"""email_sender.jobs and email_sender.compose: messages become jobs, jobs become emails (pure,
no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from email_sender.compose import (
    IDEMPOTENCY_HEADER,
    build_email,
    envelope_sender,
    message_id_for,
    readable_time,
)
from email_sender.jobs import InvalidJob, job_from_message, parse_email_job
from eventpost.contracts import EmailJob

MAIL_FROM = "EventPost <no-reply@eventpost.local>"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

EVENT = {
    "id": "ev1",
    "title": "Python <script>alert(1)</script> & friends",
    "description": "Talks & <b>pizza</b>",
    "topics": ["python"],
    "starts_at": "2026-12-01T20:00:00+01:00",
    "ends_at": "2026-12-01T22:30:00+01:00",
    "place": {"name": "Hall <A>", "address": "1 Main St", "lat": 1.0, "lng": 2.0},
}


def build(job: EmailJob, request_id: str | None = "req-1") -> EmailMessage:
    msg = build_email(job, mail_from=MAIL_FROM, now=NOW, request_id=request_id)
    # What the receiver sees: the bytes on the wire, parsed again.
    return message_from_bytes(msg.data, policy=policy.default)  # type: ignore[return-value]


def text(msg: EmailMessage) -> str:
    # Line ends as a mail reader shows them (on the wire they are CRLF).
    return msg.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]


def html(msg: EmailMessage) -> str:
    return msg.get_body(("html",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]


def reminder_job(**changes) -> EmailJob:
    payload = {
        "to": "ann@example.com",
        "idempotency_key": "reminder:n1:v1",
        "template": "reminder",
        "context": {"event": EVENT, "message": "Bring <your> laptop"},
        "correlation": {"notification_id": "n1", "version": 1},
        **changes,
    }
    return parse_email_job(payload)


def test_welcome_from_user_created_has_every_header_and_both_parts():
    job = job_from_message(
        "user.created", {"user_id": "u1", "username": "ann", "email": "ann@example.com"}
    )
    assert job.idempotency_key == "welcome:u1"
    msg = build(job)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["From"] == MAIL_FROM
    assert msg["To"] == "ann@example.com"
    assert "Welcome" in msg["Subject"]
    assert msg["X-Request-ID"] == "req-1"
    assert msg[IDEMPOTENCY_HEADER] == "welcome:u1"
    assert msg["Message-ID"] == message_id_for("welcome:u1", MAIL_FROM)
    assert msg["Date"].datetime == NOW
    assert msg["Auto-Submitted"] == "auto-generated"
    assert "ann" in text(msg)
    assert "ann" in html(msg)


def test_message_id_is_the_same_for_the_same_key_and_differs_between_keys():
    a = message_id_for("reminder:n1:v1", MAIL_FROM)
    assert a == message_id_for("reminder:n1:v1", MAIL_FROM)
    assert a != message_id_for("reminder:n1:v2", MAIL_FROM)
    assert a.startswith("<") and a.endswith("@eventpost.local>")


def test_verification_email_has_the_token_line_and_keeps_the_token_out_of_headers():
    payload = {
        "user_id": "u1",
        "username": "ann",
        "email": "second@example.com",
        "token": "tok-123_abc",
        "expires_at": "2026-12-02T19:00:00Z",
    }
    job = job_from_message("user.email_added", payload)
    msg = build(job)
    assert msg["To"] == "second@example.com"
    assert "Verification token: tok-123_abc" in text(msg).splitlines()
    assert "tok-123_abc" in html(msg)
    assert "tok-123_abc" not in job.idempotency_key
    assert "tok-123_abc" not in str(msg["Message-ID"])
    assert "Wednesday 2 December 2026, 19:00 UTC" in text(msg)
    # Another token for the same address is another email.
    other = job_from_message("user.email_added", {**payload, "token": "tok-456"})
    assert other.idempotency_key != job.idempotency_key


def test_reminder_names_event_readable_start_and_place_and_escapes_html():
    msg = build(reminder_job())
    assert msg["Subject"] == "Reminder: Python <script>alert(1)</script> & friends"
    body = html(msg)
    assert "<script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends" in body
    assert "Hall &lt;A&gt;" in body
    assert "Bring &lt;your&gt; laptop" in body
    assert "<b>pizza</b>" not in body
    assert "Tuesday 1 December 2026, 19:00 UTC" in body
    plain = text(msg)
    assert "Python <script>alert(1)</script> & friends" in plain
    assert "Starts: Tuesday 1 December 2026, 19:00 UTC" in plain
    assert "Ends:   Tuesday 1 December 2026, 21:30 UTC" in plain
    assert "Place:  Hall <A>, 1 Main St" in plain
    assert "Bring <your> laptop" in plain


def test_job_subject_overrides_the_templates_and_is_kept_on_one_line():
    msg = build(reminder_job(subject="Soon:\r\nBcc: victim@example.com"))
    assert msg["Subject"] == "Soon: Bcc: victim@example.com"
    assert msg["Bcc"] is None


def test_event_cancelled_template():
    job = parse_email_job(
        {
            "to": "ann@example.com",
            "idempotency_key": "cancelled:n1",
            "template": "event_cancelled",
            "context": {"event": EVENT},
        }
    )
    msg = build(job)
    assert msg["Subject"].startswith("Cancelled: Python")
    assert "cancelled" in text(msg)
    assert "Tuesday 1 December 2026, 19:00 UTC" in text(msg)
    assert "&lt;script&gt;" in html(msg)


def test_ready_made_job_gets_an_escaped_html_part_when_it_has_none():
    job = parse_email_job(
        {
            "to": "ann@example.com",
            "idempotency_key": "k1",
            "subject": "Hello",
            "text": "1 < 2 & <i>so</i>",
        }
    )
    msg = build(job)
    assert msg["Subject"] == "Hello"
    assert text(msg).rstrip("\n") == "1 < 2 & <i>so</i>"
    assert "1 &lt; 2 &amp; &lt;i&gt;so&lt;/i&gt;" in html(msg)


def test_ready_made_html_is_sent_as_given():
    job = parse_email_job(
        {
            "to": "ann@example.com",
            "idempotency_key": "k1",
            "subject": "Hello",
            "text": "plain",
            "html": "<p>Already <em>escaped</em> by its producer</p>",
        }
    )
    assert html(build(job)).strip() == "<p>Already <em>escaped</em> by its producer</p>"


def test_unsafe_request_id_is_left_out():
    job = reminder_job()
    assert build(job, request_id="bad\r\nX-Evil: 1")["X-Request-ID"] is None
    assert build(job, request_id=None)["X-Request-ID"] is None


def test_readable_time():
    assert readable_time("2026-12-01T20:00:00+01:00") == "Tuesday 1 December 2026, 19:00 UTC"
    assert readable_time("2027-01-09T08:05:00Z") == "Saturday 9 January 2027, 08:05 UTC"
    with pytest.raises(InvalidJob):
        readable_time("2026-12-01T20:00:00")


def test_envelope_sender_is_the_bare_address():
    assert envelope_sender(MAIL_FROM) == "no-reply@eventpost.local"
    assert envelope_sender("a@b.example") == "a@b.example"


def test_unknown_fields_of_a_job_are_ignored():
    job = parse_email_job(
        {"to": "a@example.com", "idempotency_key": "k", "subject": "s", "text": "t", "new": 1}
    )
    assert job.subject == "s"


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"idempotency_key": "k", "subject": "s", "text": "t"}, "to"),
        ({"to": "not an address", "idempotency_key": "k", "subject": "s", "text": "t"}, "to"),
        ({"to": "a@example.com", "subject": "s", "text": "t"}, "idempotency_key"),
        ({"to": "a@example.com", "idempotency_key": "a\nb", "subject": "s", "text": "t"}, "key"),
        ({"to": "a@example.com", "idempotency_key": "k" * 201, "subject": "s", "text": "t"}, "key"),
        ({"to": "a@example.com", "idempotency_key": "k", "text": "t"}, "subject and text"),
        ({"to": "a@example.com", "idempotency_key": "k", "subject": "s"}, "subject and text"),
        ({"to": "a@example.com", "idempotency_key": "k", "template": "nope"}, "template"),
        ({"to": "a@example.com", "idempotency_key": "k", "subject": "s", "text": 5}, "text"),
        ({"to": ["a@example.com"], "idempotency_key": "k", "subject": "s", "text": "t"}, "to"),
        (
            {"to": "a@example.com", "idempotency_key": "k", "template": "reminder", "context": []},
            "context",
        ),
        (
            {
                "to": "a@example.com",
                "idempotency_key": "k",
                "subject": "s",
                "text": "t",
                "correlation": "x",
            },
            "correlation",
        ),
    ],
)
def test_invalid_jobs_are_refused(payload, fragment):
    with pytest.raises(InvalidJob, match=fragment):
        parse_email_job(payload)


@pytest.mark.parametrize(
    ("context", "fragment"),
    [
        ({}, "event"),
        ({"event": {**EVENT, "title": ""}}, "title"),
        ({"event": {**EVENT, "starts_at": "2026-12-01T20:00:00"}}, "offset"),
        ({"event": {**EVENT, "place": "somewhere"}}, "place"),
        ({"event": {**EVENT, "title": 7}}, "title"),
    ],
)
def test_reminder_with_a_bad_context_is_invalid(context, fragment):
    job = parse_email_job(
        {"to": "a@example.com", "idempotency_key": "k", "template": "reminder", "context": context}
    )
    with pytest.raises(InvalidJob, match=fragment):
        build(job)


def test_welcome_without_username_and_unknown_message_types_are_invalid():
    with pytest.raises(InvalidJob, match="username"):
        job_from_message("user.created", {"user_id": "u1", "email": "a@example.com"})
    with pytest.raises(InvalidJob, match="does not handle"):
        job_from_message("event.created", {"event": {}})
    with pytest.raises(InvalidJob, match="username"):
        build(EmailJob(to="a@example.com", idempotency_key="k", template="welcome", context={}))


def test_text_that_is_not_ascii_and_long_headers_come_back_as_written():
    subject = "Rappel : Fête de l'été à Montréal " + "très " * 30
    job = EmailJob(
        to="ann@example.com",
        idempotency_key="k-été",
        subject=subject,
        text="Première ligne\nsecond line\r\n.a dot first\n" + "é" * 200,
    )
    email = build_email(job, mail_from="Événements <no-reply@eventpost.local>", now=NOW)
    assert email.data.isascii() and not email.smtputf8  # 7-bit clean: any server takes it
    assert b"\n" not in email.data.replace(b"\r\n", b"")  # CRLF line ends only
    head = email.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert max(len(line) for line in head) <= 78
    msg = message_from_bytes(email.data, policy=policy.default)
    assert msg["Subject"] == " ".join(subject.split())
    assert msg["From"] == "Événements <no-reply@eventpost.local>"
    assert msg[IDEMPOTENCY_HEADER] == "k-été"
    assert text(msg) == "Première ligne\nsecond line\n.a dot first\n" + "é" * 200 + "\n"
    assert "Première ligne" in html(msg)
    assert msg.defects == [] and all(part.defects == [] for part in msg.iter_parts())
    assert email.recipients == ("ann@example.com",)
    assert email.sender == "no-reply@eventpost.local"


def test_ascii_parts_go_as_7bit_and_a_recipient_that_is_not_ascii_needs_smtputf8():
    job = EmailJob(to="jörg@example.com", idempotency_key="k1", subject="Hi", text="Plain.")
    email = build_email(job, mail_from=MAIL_FROM, now=NOW)
    assert email.smtputf8
    msg = message_from_bytes(email.data, policy=policy.default)
    assert msg["To"] == "jörg@example.com"
    assert msg.get_body(("plain",))["Content-Transfer-Encoding"] == "7bit"


@pytest.mark.parametrize(
    "to", ["ann@example.com, bob@example.com", "Ann <ann@example.com>", "ann@example.com\r\nBcc: x"]
)
def test_a_to_that_is_not_one_bare_address_is_refused(to):
    with pytest.raises(InvalidJob, match="not a valid email address"):
        build_email(
            EmailJob(to=to, idempotency_key="k", subject="s", text="t"),
            mail_from=MAIL_FROM,
            now=NOW,
        )


def test_a_sender_address_that_is_not_ascii_needs_smtputf8_too():
    job = EmailJob(to="ann@example.com", idempotency_key="k1", subject="Hi", text="Plain.")
    email = build_email(job, mail_from="Événements <envoi@événements.example>", now=NOW)
    assert email.smtputf8
    assert email.sender == "envoi@événements.example"
    msg = message_from_bytes(email.data, policy=policy.default)
    assert msg["From"] == "Événements <envoi@événements.example>"
