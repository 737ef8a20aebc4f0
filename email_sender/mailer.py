"""SMTP delivery over one reused connection, with every failure sorted into temporary or
permanent.

- 4xx replies, timeouts, refused or dropped connections, TLS trouble: :class:`TemporaryMailError`
  (the job is retried later).
- 5xx replies: :class:`PermanentMailError` with the reply code and text (the job fails at once
  and is reported).

The connection is opened on the first send, kept for the next ones, checked with ``NOOP``
when it has been idle for a while (servers drop idle clients), and dropped after any error
that leaves its state unknown, so the next send starts clean.
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from email_sender.compose import OutgoingEmail
from eventpost.settings import Settings

log = logging.getLogger(__name__)

TLS_MODES = ("none", "starttls", "ssl")


class MailError(Exception):
    """Delivery failed. ``code`` is the SMTP reply code when the server gave one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryMailError(MailError):
    """Delivery failed in a way that may pass (4xx, timeout, connection trouble): retry."""


class PermanentMailError(MailError):
    """The server refused the message for good (5xx): do not retry."""


def _reply_text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "replace")
    return str(reply)


def classify_reply(code: int, reply: bytes | str) -> MailError:
    """The error for an SMTP failure reply: 5xx permanent, anything else temporary."""
    text = _reply_text(reply)
    message = f"{code} {text}".strip()
    if 500 <= code <= 599:
        return PermanentMailError(message, code)
    return TemporaryMailError(message, code)


@dataclass(eq=False)
class SmtpMailer:
    """Sends emails through one SMTP server, reusing one connection.

    ``tls``: ``none``, ``starttls`` (plain connect, then STARTTLS, required) or ``ssl``
    (implicit TLS). ``user``/``password``: AUTH when both are given. ``timeout`` (seconds)
    bounds the connect and every read and write, so a server that stops answering fails the
    send instead of hanging it. ``ssl_context`` defaults to the system's trust store with
    hostname checks. ``noop_after``: a connection idle for longer is checked with NOOP before
    it is used again. ``local_hostname``: the name said in EHLO (default this host's name;
    smtplib's default is ``socket.getfqdn()``, a DNS lookup that can stall for seconds).

    Not thread-safe: one mailer per worker thread.
    """

    host: str
    port: int
    _: KW_ONLY
    tls: str = "none"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 10.0
    ssl_context: ssl.SSLContext | None = None
    noop_after: float = 1.0
    local_hostname: str | None = None
    clock: Callable[[], float] = time.monotonic
    _conn: smtplib.SMTP | None = field(default=None, init=False, repr=False)
    _last_used: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, got {self.tls!r}")
        self.local_hostname = self.local_hostname or socket.gethostname() or "localhost"

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> SmtpMailer:
        """A mailer for ``SMTP_HOST``/``SMTP_PORT``/``SMTP_TLS``/``SMTP_USER``/
        ``SMTP_PASSWORD`` and ``settings.smtp_timeout``."""
        kwargs: dict[str, object] = {
            "tls": settings.smtp_tls,
            "user": settings.smtp_user,
            "password": settings.smtp_password,
            "timeout": settings.smtp_timeout,
        }
        kwargs.update(overrides)
        return cls(settings.smtp_host, settings.smtp_port, **kwargs)  # type: ignore[arg-type]

    @property
    def connected(self) -> bool:
        """Whether a connection is open (it may still turn out to be dead)."""
        return self._conn is not None

    def send(self, email: OutgoingEmail, *, sender: str | None = None) -> None:
        """Deliver ``email`` to its recipients (envelope sender ``sender``, default its own).
        Returns once the server accepted it.
        Raises :class:`TemporaryMailError` or :class:`PermanentMailError`."""
        try:
            conn = self._connection()
        except smtplib.SMTPResponseException as exc:
            # Refused while greeting, STARTTLS or login (a 535 for a wrong SMTP_PASSWORD, a
            # 530 asking for STARTTLS): about the session, not this message, so it may pass
            # once the configuration or the server is fixed. Retried, never failed for good.
            self.close()
            raise TemporaryMailError(
                f"SMTP {self.host}:{self.port} refused the session: "
                f"{exc.smtp_code} {_reply_text(exc.smtp_error)}",
                exc.smtp_code,
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self.close()
            raise TemporaryMailError(f"SMTP {self.host}:{self.port}: {exc!r}") from exc
        try:
            refused = conn.sendmail(
                sender or email.sender,
                list(email.recipients),
                email.data,
                # As smtplib's send_message does for an address that is not ASCII.
                mail_options=("SMTPUTF8", "BODY=8BITMIME") if email.smtputf8 else (),
            )
        except smtplib.SMTPNotSupportedError as exc:
            # The recipient's address is not ASCII and this server does not take such mail.
            raise PermanentMailError(f"SMTP {self.host}:{self.port}: {exc}") from exc
        except smtplib.SMTPRecipientsRefused as exc:
            # Every recipient was refused; each has its own reply, take the first.
            code, reply = next(iter(exc.recipients.values()))
            raise self._after_reply(code, reply) from exc
        except smtplib.SMTPResponseException as exc:
            raise self._after_reply(exc.smtp_code, exc.smtp_error) from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Timeouts, refused/reset/dropped connections, TLS errors: state unknown.
            self.close()
            raise TemporaryMailError(f"SMTP {self.host}:{self.port}: {exc!r}") from exc
        self._last_used = self.clock()
        if refused:
            # Only with several recipients, some refused: the message went to the others.
            log.warning("some recipients were refused", extra={"refused": str(refused)})

    def close(self) -> None:
        """Say QUIT (best effort) and drop the connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()

    def __enter__(self) -> SmtpMailer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------

    def _after_reply(self, code: int, reply: bytes | str) -> MailError:
        error = classify_reply(code, reply)
        # 421 means the server is closing the channel; smtplib already reset the
        # transaction after any other reply, so the connection stays usable.
        if code == 421 or code < 0:
            self.close()
        return error

    def _connection(self) -> smtplib.SMTP:
        idle = self.clock() - self._last_used
        if self._conn is not None and idle >= self.noop_after and not self._alive(self._conn):
            log.info("SMTP connection went stale, reconnecting")
            self.close()
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _alive(self, conn: smtplib.SMTP) -> bool:
        try:
            code, _ = conn.noop()
        except (smtplib.SMTPException, OSError):
            return False
        return code == 250

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        conn: smtplib.SMTP
        if self.tls == "ssl":
            conn = smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=self.local_hostname,
                timeout=self.timeout,
                context=self._context(),
            )
        else:
            conn = smtplib.SMTP(
                self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
            )
        try:
            conn.ehlo()
            if self.tls == "starttls":
                conn.starttls(context=self._context())
                conn.ehlo()
            if self.user and self.password:
                conn.login(self.user, self.password)
        except BaseException:
            conn.close()
            raise
        self._last_used = self.clock()
        log.info(
            "SMTP connection opened",
            extra={"smtp_host": self.host, "smtp_port": self.port, "tls": self.tls},
        )
        return conn
