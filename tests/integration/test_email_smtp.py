"""SmtpMailer against real aiosmtpd servers: delivery, connection reuse and reconnects, reply
classes, timeouts, STARTTLS/SSL with AUTH."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

import pytest

from devtools.smtp_sink import SmtpSink
from email_sender.compose import build_email
from email_sender.mailer import PermanentMailError, SmtpMailer, TemporaryMailError
from eventpost.contracts import EmailJob
from tests.integration.test_email_support import (
    MAIL_FROM,
    ScriptedHandler,
    SilentServer,
    client_tls_context,
    password_checker,
    self_signed_cert,
    server_tls_context,
    smtp_server,
)


def email(to: str = "ann@example.com", key: str = "k1", subject: str = "Hello"):
    job = EmailJob(to=to, idempotency_key=key, subject=subject, text="Hi there")
    return build_email(job, mail_from=MAIL_FROM, now=datetime.now(UTC), request_id="req-7")


def test_delivers_and_reuses_one_connection():
    handler = ScriptedHandler()
    with smtp_server(handler) as server, SmtpMailer("127.0.0.1", server.port, timeout=5) as m:
        m.send(email(key="a"), sender="no-reply@eventpost.test")
        m.send(email(key="b"))
        m.send(email(key="c"))
    assert [msg["X-EventPost-Idempotency-Key"] for msg in handler.accepted] == ["a", "b", "c"]
    assert len(handler.sessions) == 1
    first = handler.accepted[0]
    assert first["X-Request-ID"] == "req-7"
    assert first["From"] == MAIL_FROM


def test_reconnects_when_the_server_dropped_the_idle_connection():
    handler = ScriptedHandler()
    with smtp_server(handler) as server:
        port = server.port
        mailer = SmtpMailer("127.0.0.1", port, timeout=5, noop_after=0.0)
        mailer.send(email(key="before"))
    # The server went away (closing our connection) and came back on the same port.
    with smtp_server(handler, port=port):
        mailer.send(email(key="after"))
        mailer.close()
    assert [m["X-EventPost-Idempotency-Key"] for m in handler.accepted] == ["before", "after"]
    assert len(handler.sessions) == 2


def test_421_is_temporary_and_the_next_send_uses_a_fresh_connection():
    handler = ScriptedHandler(["421 4.3.2 Service shutting down"])
    with smtp_server(handler) as server, SmtpMailer("127.0.0.1", server.port, timeout=5) as m:
        with pytest.raises(TemporaryMailError) as info:
            m.send(email())
        assert info.value.code == 421
        assert "Service shutting down" in str(info.value)
        assert not m.connected
        m.send(email())
    assert len(handler.accepted) == 1
    assert len(handler.sessions) == 2


def test_451_is_temporary_and_keeps_the_connection():
    handler = ScriptedHandler(["451 4.7.1 Greylisted, try later"])
    with smtp_server(handler) as server, SmtpMailer("127.0.0.1", server.port, timeout=5) as m:
        with pytest.raises(TemporaryMailError, match="Greylisted"):
            m.send(email())
        m.send(email())
    assert len(handler.accepted) == 1
    assert len(handler.sessions) == 1


def test_550_at_data_is_permanent_with_the_reply_text():
    handler = ScriptedHandler(["550 5.7.1 Message rejected as spam"])
    with (
        smtp_server(handler) as server,
        SmtpMailer("127.0.0.1", server.port, timeout=5) as m,
        pytest.raises(PermanentMailError) as info,
    ):
        m.send(email())
    assert info.value.code == 550
    assert str(info.value) == "550 5.7.1 Message rejected as spam"
    assert handler.accepted == []


def test_550_at_rcpt_is_permanent():
    handler = ScriptedHandler(refuse_rcpt=["gone@example.com"])
    with smtp_server(handler) as server, SmtpMailer("127.0.0.1", server.port, timeout=5) as m:
        with pytest.raises(PermanentMailError, match="Recipient address rejected") as info:
            m.send(email(to="gone@example.com"))
        assert info.value.code == 550
        m.send(email(to="here@example.com"))
    assert [str(msg["To"]) for msg in handler.accepted] == ["here@example.com"]


def test_a_server_that_never_answers_times_out():
    with SilentServer() as silent:
        mailer = SmtpMailer("127.0.0.1", silent.port, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(TemporaryMailError):
            mailer.send(email())
        # A bound against hanging for ever, not a speed assertion.
        assert time.monotonic() - started < 10
        assert silent.accepted == 1
        assert not mailer.connected


def test_stalling_in_data_times_out():
    handler = ScriptedHandler(["stall:3"])
    with smtp_server(handler) as server, SmtpMailer("127.0.0.1", server.port, timeout=0.5) as m:
        with pytest.raises(TemporaryMailError):
            m.send(email())
        assert not m.connected


def test_nobody_listening_is_temporary():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TemporaryMailError, match="refused"):
        SmtpMailer("127.0.0.1", port, timeout=2).send(email())


def test_starttls_with_auth(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    handler = ScriptedHandler()
    with smtp_server(
        handler,
        tls_context=server_tls_context(cert, key),
        require_starttls=True,
        authenticator=password_checker("mailer", "s3cret"),
        auth_require_tls=True,
        auth_required=True,
    ) as server:
        good = SmtpMailer(
            "127.0.0.1",
            server.port,
            tls="starttls",
            user="mailer",
            password="s3cret",
            timeout=5,
            ssl_context=client_tls_context(cert),
        )
        good.send(email())
        good.close()
        wrong = SmtpMailer(
            "127.0.0.1",
            server.port,
            tls="starttls",
            user="mailer",
            password="wrong",
            timeout=5,
            ssl_context=client_tls_context(cert),
        )
        # A refused login is about the configuration, not the message: retried, so the email
        # goes out once SMTP_PASSWORD is fixed.
        with pytest.raises(TemporaryMailError) as info:
            wrong.send(email())
        assert info.value.code == 535
        # Without STARTTLS the server refuses the sender (530 at MAIL FROM): a 5xx reply to
        # the message, failed at once.
        plain = SmtpMailer("127.0.0.1", server.port, timeout=5)
        with pytest.raises(PermanentMailError):
            plain.send(email())
    assert len(handler.accepted) == 1
    assert handler.authenticated == [True]


def test_starttls_refuses_a_certificate_it_cannot_verify(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    with smtp_server(ScriptedHandler(), tls_context=server_tls_context(cert, key)) as server:
        mailer = SmtpMailer("127.0.0.1", server.port, tls="starttls", timeout=5)
        with pytest.raises(TemporaryMailError, match="CERTIFICATE_VERIFY_FAILED"):
            mailer.send(email())


def test_implicit_ssl_with_auth(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    handler = ScriptedHandler()
    with smtp_server(
        handler,
        ssl_context=server_tls_context(cert, key),
        authenticator=password_checker("mailer", "s3cret"),
        # aiosmtpd only counts STARTTLS as TLS; this whole connection is TLS.
        auth_require_tls=False,
    ) as server:
        mailer = SmtpMailer(
            "127.0.0.1",
            server.port,
            tls="ssl",
            user="mailer",
            password="s3cret",
            timeout=5,
            ssl_context=client_tls_context(cert),
        )
        mailer.send(email(key="x"))
        mailer.send(email(key="y"))
        mailer.close()
    assert [m["X-EventPost-Idempotency-Key"] for m in handler.accepted] == ["x", "y"]
    assert handler.authenticated == [True, True]
    assert len(handler.sessions) == 1


def test_sink_keeps_each_message_as_a_file(tmp_path):
    with SmtpSink(tmp_path / "mail") as sink, SmtpMailer("127.0.0.1", sink.port, timeout=5) as m:
        m.send(email(to="ann@example.com", key="k1", subject="First"))
        m.send(email(to="bob@example.com", key="k2", subject="Second"))
    files = sorted((tmp_path / "mail").iterdir())
    assert len(files) == 2
    assert all(f.suffix == ".eml" and not f.name.startswith(".") for f in files)
    assert b"X-RcptTo: ann@example.com" in files[0].read_bytes()


def test_an_address_that_is_not_ascii_goes_with_smtputf8_where_the_server_offers_it():
    handler = ScriptedHandler()
    with (
        smtp_server(handler, enable_SMTPUTF8=True) as server,
        SmtpMailer("127.0.0.1", server.port, timeout=5) as m,
    ):
        m.send(email(to="jörg@example.com"))
    assert [str(msg["To"]) for msg in handler.accepted] == ["jörg@example.com"]


def test_an_address_that_is_not_ascii_is_refused_for_good_where_the_server_lacks_smtputf8():
    handler = ScriptedHandler()
    with (
        smtp_server(handler, enable_SMTPUTF8=False) as server,
        SmtpMailer("127.0.0.1", server.port, timeout=5) as m,
    ):
        with pytest.raises(PermanentMailError, match="SMTPUTF8"):
            m.send(email(to="jörg@example.com"))
        m.send(email(to="ann@example.com"))  # the same connection goes on
    assert [str(msg["To"]) for msg in handler.accepted] == ["ann@example.com"]
    assert len(handler.sessions) == 1
