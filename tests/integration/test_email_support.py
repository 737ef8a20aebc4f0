"""Helpers for the email-sender's integration tests (this module holds no tests): SMTP test
servers that misbehave on cue, a self-signed certificate, and a wired EmailSender."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

from devtools.smtp_sink import LocalController
from email_sender.mailer import SmtpMailer
from email_sender.sender import BINDINGS, EmailSender, make_consumer
from eventpost.messaging import Consumer, Envelope, Publisher
from eventpost.settings import Settings
from tests.integration._amqp import Broker, running, unique, wait_until

MAIL_FROM = "EventPost Tests <no-reply@eventpost.test>"


class ScriptedHandler:
    """An aiosmtpd handler that answers each DATA as its script says, then ``default``.

    Actions: ``"accept"`` (250, message kept in :attr:`accepted`), a reply like ``"421 Busy"``
    or ``"550 No such user"``, ``"stall:<seconds>"`` (wait, then accept), ``"hang"`` (wait
    until the server stops, never accept). Addresses in ``refuse_rcpt`` are refused at RCPT
    with 550."""

    def __init__(
        self,
        script: Sequence[str] = (),
        default: str = "accept",
        refuse_rcpt: Sequence[str] = (),
    ) -> None:
        self.script = deque(script)
        self.default = default
        self.refuse_rcpt = {a.lower() for a in refuse_rcpt}
        self.attempts: list[float] = []
        self.accepted: list[EmailMessage] = []
        self.sessions: set[int] = set()
        self.authenticated: list[bool] = []
        self.stalling = threading.Event()
        self._lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.refuse_rcpt:
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self._lock:
            self.attempts.append(time.monotonic())
            self.sessions.add(id(session))
            self.authenticated.append(bool(session.authenticated))
            action = self.script.popleft() if self.script else self.default
        if action == "hang":
            self.stalling.set()
            await asyncio.sleep(3600)
            return "451 Gave up"
        if action.startswith("stall:"):
            self.stalling.set()
            await asyncio.sleep(float(action.partition(":")[2]))
            action = "accept"
        if action == "accept":
            msg = message_from_bytes(envelope.original_content, policy=policy.default)
            with self._lock:
                self.accepted.append(msg)  # type: ignore[arg-type]
            return "250 OK: queued"
        return action


class StartTlsSMTP(SMTP):
    """aiosmtpd's SMTP with a STARTTLS that works on Python 3.11: aiosmtpd 1.4.6 wires the
    TLS layer by hand through asyncio internals that changed in 3.11 (its handshake never
    completes); this uses ``loop.start_tls`` instead. Test servers only."""

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push("501 Syntax: STARTTLS")
            return
        await self.push("220 Ready to start TLS")
        self._original_transport = self.transport
        transport = await self.loop.start_tls(
            self.transport, self, self.tls_context, server_side=True, ssl_handshake_timeout=5
        )
        self._reader._transport = transport
        self._writer._transport = transport
        self.transport = transport
        # aiosmtpd looks at this attribute to know the session is encrypted.
        self._tls_protocol = transport
        # RFC 3207 4.2: forget everything said before the handshake.
        self._set_rset_state()
        self.session.extended_smtp = False
        self.session.host_name = None


class StartTlsController(LocalController):
    def factory(self):
        return StartTlsSMTP(self.handler, **self.SMTP_kwargs)


@contextlib.contextmanager
def smtp_server(handler: Any, port: int = 0, **smtp_kwargs: Any) -> Iterator[LocalController]:
    """An aiosmtpd server on 127.0.0.1 and ``port`` (0: a free one, see ``controller.port``);
    ``smtp_kwargs`` go to aiosmtpd's SMTP (TLS, auth...)."""
    controller = StartTlsController(handler, hostname="127.0.0.1", port=port, **smtp_kwargs)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


class SilentServer:
    """Accepts TCP connections and never says a word (no SMTP greeting)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._sock.close()


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_tls_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def password_checker(user: str, password: str):
    """An aiosmtpd authenticator accepting only ``user``/``password``."""

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        return AuthResult(success=ok, handled=False)

    return authenticate


# -- a wired email-sender over the test broker -----------------------------------------------


@dataclass
class Wired:
    """An EmailSender and its Consumer on a test exchange and queue; publish jobs with
    :meth:`publish` and read outcomes with :meth:`outcomes`."""

    broker: Broker
    sender: EmailSender
    consumer: Consumer
    outcome_queue: str

    def publish(self, *envelopes: Envelope) -> None:
        with Publisher(
            self.broker.url, exchange=self.broker.exchange, connection_name=unique("email-pub")
        ) as publisher:
            for envelope in envelopes:
                publisher.publish(envelope)

    def outcomes(self) -> list[Envelope]:
        return [
            Envelope.from_bytes(body) for _, _, body in self.broker.take_all(self.outcome_queue)
        ]


@contextlib.contextmanager
def consuming(wired: Wired) -> Iterator[None]:
    """Run the wired consumer in a thread, once it consumes; stop it on the way out."""
    with running(wired.consumer):
        wait_until(
            lambda: wired.broker.consumers(wired.consumer.queue) >= 1,
            timeout=30,
            what="the consumer to start",
        )
        yield


def wire(
    broker: Broker,
    data_dir: Path,
    smtp_port: int,
    *,
    retry_delays: tuple[float, ...] = (0.2, 0.5, 1.0),
    smtp_timeout: float = 5.0,
    prefetch: int = 10,
    batch_size: int = 1,
) -> Wired:
    settings = Settings(
        data_dir=data_dir,
        amqp_url=broker.url,
        smtp_port=smtp_port,
        smtp_timeout=smtp_timeout,
        mail_from=MAIL_FROM,
        retry_delays=retry_delays,
    )
    from eventpost.storage.sqlite import SqliteStore  # (the adapter is still young)

    sender = EmailSender(
        mailer=SmtpMailer.from_settings(settings),
        store_factory=lambda: SqliteStore(data_dir / "email_sender.sqlite3"),
        publisher_factory=lambda: Publisher(
            broker.url, exchange=broker.exchange, connection_name=unique("email-outcomes")
        ),
        mail_from=MAIL_FROM,
        max_attempts=len(retry_delays) + 1,
        batch_size=batch_size,
    )
    consumer = make_consumer(
        settings,
        sender,
        queue=broker.queue_name("email"),
        bindings=BINDINGS,
        exchange=broker.exchange,
        prefetch=prefetch,
    )
    outcome_queue = broker.bound_queue("email.sent", "email.failed")
    return Wired(broker, sender, consumer, outcome_queue)


def email_job(key: str | None = None, **changes: Any) -> Envelope:
    """An ``email.send`` envelope with a reminder job for a unique address."""
    key = key or unique("reminder")
    payload = {
        "to": f"{key}@example.com",
        "idempotency_key": key,
        "template": "reminder",
        "context": {
            "event": {
                "title": "Meetup <script>alert('x')</script>",
                "starts_at": "2026-12-01T20:00:00+01:00",
                "place": {"name": "The Hall", "address": "1 Main St"},
            }
        },
        "correlation": {"notification_id": key, "version": 1},
        **changes,
    }
    return Envelope.new("email.send", payload, request_id=unique("req"))


def parked(broker: Broker, queue: str) -> list[dict[str, Any]]:
    return [json.loads(body) for _, _, body in broker.take_all(f"{queue}.parked")]
