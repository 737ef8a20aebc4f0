"""The dev SMTP sink and its Mailbox reader: files written atomically, read back, waited
for; ``python -m devtools.smtp_sink`` as a process that stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devtools.launcher import free_port
from devtools.smtp_sink import Mailbox, SmtpSink, store_message
from email_sender.compose import build_email
from email_sender.mailer import SmtpMailer
from eventpost.contracts import EmailJob
from tests.integration.test_email_support import MAIL_FROM

ROOT = Path(__file__).resolve().parents[2]


def email(to: str, subject: str, key: str = "k"):
    job = EmailJob(to=to, idempotency_key=key, subject=subject, text=f"about {subject}")
    return build_email(job, mail_from=MAIL_FROM, now=datetime.now(UTC))


def test_mailbox_reads_what_the_sink_stored(tmp_path):
    box = Mailbox(tmp_path / "mail")
    assert box.messages() == []
    with SmtpSink(tmp_path / "mail") as sink, SmtpMailer("127.0.0.1", sink.port) as mailer:
        mailer.send(email("ann@example.com", "Welcome to EventPost, ann!"))
        mailer.send(email("bob@example.com", "Reminder: Meetup"))
        mailer.send(email("Ann@Example.com", "Reminder: Other"))
    assert [m["Subject"] for m in box.messages()] == [
        "Welcome to EventPost, ann!",
        "Reminder: Meetup",
        "Reminder: Other",
    ]
    assert [m["Subject"] for m in box.newest(2)] == ["Reminder: Other", "Reminder: Meetup"]
    assert box.newest(0) == []
    # Addresses match case-insensitively; wait_for returns the newest match.
    assert box.wait_for(to="ann@example.com")["Subject"] == "Reminder: Other"
    assert box.wait_for(to="ann@example.com", subject_contains="Welcome")["X-MailFrom"] == (
        "no-reply@eventpost.test"
    )
    assert len(box.find(subject_contains="Reminder")) == 2
    found = box.wait_for(predicate=lambda m: "Meetup" in m.get_body(("plain",)).get_content())
    assert found["To"] == "bob@example.com"


def test_wait_for_waits_for_a_message_to_arrive(tmp_path):
    box = Mailbox(tmp_path / "mail")
    with SmtpSink(tmp_path / "mail") as sink:
        timer = threading.Timer(
            0.3,
            lambda: SmtpMailer("127.0.0.1", sink.port).send(email("late@example.com", "Late")),
        )
        timer.start()
        try:
            assert box.wait_for(to="late@example.com", timeout=10)["Subject"] == "Late"
        finally:
            timer.join()


def test_wait_for_times_out_naming_what_is_there(tmp_path):
    box = Mailbox(tmp_path)
    store_message(tmp_path, b"To: a@example.com\r\nSubject: Other\r\n\r\nhi\r\n")
    with pytest.raises(TimeoutError, match=r"a@example.com: Other"):
        box.wait_for(to="b@example.com", timeout=0.2)


def test_files_being_written_are_not_read(tmp_path):
    (tmp_path / ".20260101T000000.000000Z-x.eml.tmp").write_bytes(b"Subject: half")
    store_message(tmp_path, b"Subject: whole\r\n\r\n")
    assert [m["Subject"] for m in Mailbox(tmp_path).messages()] == ["whole"]


def test_sink_process_stores_mail_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path), "SMTP_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.smtp_sink"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                SmtpMailer("127.0.0.1", port, timeout=2).send(email("p@example.com", "Via process"))
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        box = Mailbox(tmp_path / "mail")
        assert box.wait_for(to="p@example.com")["Subject"] == "Via process"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert b"SMTP sink listening" in out and b"SMTP sink stopped" in out
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", port, timeout=1)
