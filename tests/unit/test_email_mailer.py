"""email_sender.mailer: which SMTP failures are worth a retry (pure parts)."""

from __future__ import annotations

import pytest

from email_sender.mailer import (
    PermanentMailError,
    SmtpMailer,
    TemporaryMailError,
    classify_reply,
)
from eventpost.settings import Settings


@pytest.mark.parametrize("code", [421, 450, 451, 452, 499])
def test_4xx_replies_are_temporary(code):
    error = classify_reply(code, b"Try again later")
    assert isinstance(error, TemporaryMailError)
    assert error.code == code
    assert str(error) == f"{code} Try again later"


@pytest.mark.parametrize("code", [500, 550, 552, 553, 554])
def test_5xx_replies_are_permanent_and_keep_the_reply_text(code):
    error = classify_reply(code, b"5.1.1 <x@example.com>: mailbox unavailable")
    assert isinstance(error, PermanentMailError)
    assert str(error) == f"{code} 5.1.1 <x@example.com>: mailbox unavailable"


def test_odd_codes_are_temporary():
    assert isinstance(classify_reply(-1, "connection closed"), TemporaryMailError)
    assert isinstance(classify_reply(354, "go ahead"), TemporaryMailError)


def test_mailer_from_settings_and_tls_mode_check():
    settings = Settings.from_env(
        "email-sender",
        env={
            "SMTP_HOST": "mail.example",
            "SMTP_PORT": "2525",
            "SMTP_TLS": "starttls",
            "SMTP_USER": "u",
            "SMTP_PASSWORD": "p",
            "SMTP_TIMEOUT": "3.5",
        },
    )
    mailer = SmtpMailer.from_settings(settings)
    assert (mailer.host, mailer.port, mailer.tls) == ("mail.example", 2525, "starttls")
    assert (mailer.user, mailer.password, mailer.timeout) == ("u", "p", 3.5)
    assert not mailer.connected
    with pytest.raises(ValueError, match="tls"):
        SmtpMailer("h", 25, tls="tls")
