"""The dev SMTP sink: an aiosmtpd server that accepts every message and keeps it as a file,
and :class:`Mailbox`, which reads them back.

Each message becomes ``<dir>/<UTC time>-<uuid>.eml`` (e.g.
``20261201T190000.123456Z-3f2a....eml``): the raw message as received, preceded by
``X-Peer``, ``X-MailFrom`` and ``X-RcptTo`` headers that record the SMTP envelope. A file is
written under a temporary name and renamed, so a reader never sees half a message; names sort
in arrival order.

Run it with ``python -m devtools.smtp_sink`` (127.0.0.1:``SMTP_PORT``, files under
``DATA_DIR/mail``; ``--port 0`` picks a free port and logs it). SIGTERM and SIGINT stop it.

Importing this module starts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

log = logging.getLogger(__name__)

SUFFIX = ".eml"


def _filename(now: datetime) -> str:
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%S.%f}Z-{uuid.uuid4().hex}{SUFFIX}"


def store_message(directory: Path, content: bytes, *, now: datetime | None = None) -> Path:
    """Write ``content`` to a new file in ``directory`` atomically (temporary file, then
    rename); returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / _filename(now or datetime.now(UTC))
    tmp = directory / f".{final.name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(content)
    os.replace(tmp, final)
    return final


class FileSinkHandler:
    """aiosmtpd handler that stores every message in ``directory`` and answers 250, except
    for recipients it was told to refuse (``refuse``, :meth:`refuse`): those get ``550``
    at RCPT, as a server answers for a mailbox that does not exist."""

    def __init__(self, directory: Path | str, *, refuse: Iterable[str] = ()) -> None:
        self.directory = Path(directory)
        self._refused = {address.lower() for address in refuse}

    def refuse(self, address: str) -> None:
        """Answer 550 to ``address`` from now on."""
        self._refused.add(address.lower())

    def accept(self, address: str) -> None:
        """Accept ``address`` again (the mailbox was fixed)."""
        self._refused.discard(address.lower())

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self._refused:
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        trace = (
            f"X-Peer: {peer}\r\n"
            f"X-MailFrom: {envelope.mail_from}\r\n"
            f"X-RcptTo: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode("utf-8", "replace")
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        path = store_message(self.directory, trace + content)
        self.stored(path)
        return "250 Message accepted for delivery"

    def stored(self, path: Path) -> None:
        """Called after each message is stored (a hook for subclasses)."""
        log.info("message stored", extra={"path": str(path)})


class LocalController(Controller):
    """An aiosmtpd :class:`Controller` that may bind port 0: after :meth:`start`, ``port``
    is the port the server really listens on."""

    def _trigger_server(self) -> None:
        if self.server is not None and self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpSink:
    """The sink server: ``start()`` listens on ``host:port`` (0 = a free port, see
    :attr:`port`) in a background thread, ``stop()`` ends it. Also a context manager."""

    def __init__(
        self,
        directory: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        handler: FileSinkHandler | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.handler = handler or FileSinkHandler(self.directory)
        self._controller = LocalController(self.handler, hostname=host, port=port)

    @property
    def host(self) -> str:
        """The address the server binds."""
        return self._controller.hostname

    @property
    def port(self) -> int:
        """The port the server listens on (known after :meth:`start`)."""
        return self._controller.port

    def start(self) -> SmtpSink:
        """Start listening; returns self."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening and close open sessions."""
        self._controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- reading -------------------------------------------------------------------------------


def _addresses(msg: EmailMessage) -> set[str]:
    values = [str(v) for name in ("To", "Cc", "X-RcptTo") for v in msg.get_all(name, [])]
    return {addr.lower() for _, addr in getaddresses(values) if addr}


class Mailbox:
    """Reads the messages a :class:`FileSinkHandler` stored in ``directory``.

    Messages are :class:`email.message.EmailMessage` objects (``policy.default``), e.g.
    ``msg["Subject"]``, ``msg.get_body(("plain",)).get_content()``. Parsed files are cached.
    """

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, EmailMessage] = {}

    def paths(self) -> list[Path]:
        """Every stored message file, oldest first."""
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(self.directory)
                if entry.name.endswith(SUFFIX) and not entry.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        return [self.directory / name for name in names]

    def _read(self, path: Path) -> EmailMessage:
        msg = self._cache.get(path.name)
        if msg is None:
            with open(path, "rb") as fh:
                msg = BytesParser(policy=policy.default).parse(fh)  # type: ignore[assignment]
            self._cache[path.name] = msg  # type: ignore[assignment]
        return msg  # type: ignore[return-value]

    def messages(self) -> list[EmailMessage]:
        """Every stored message, oldest first."""
        return [self._read(path) for path in self.paths()]

    def newest(self, n: int = 10) -> list[EmailMessage]:
        """The ``n`` newest messages, newest first."""
        return [self._read(path) for path in reversed(self.paths()[-n:])] if n > 0 else []

    def find(
        self,
        to: str | None = None,
        subject_contains: str | None = None,
        predicate: Callable[[EmailMessage], bool] | None = None,
    ) -> list[EmailMessage]:
        """The messages (oldest first) addressed to ``to`` (To, Cc or the SMTP envelope,
        case-insensitively), whose subject contains ``subject_contains`` and for which
        ``predicate`` is true; unset criteria match everything."""
        wanted = to.lower() if to else None
        found = []
        for msg in self.messages():
            if wanted is not None and wanted not in _addresses(msg):
                continue
            if subject_contains is not None and subject_contains not in str(msg.get("Subject", "")):
                continue
            if predicate is not None and not predicate(msg):
                continue
            found.append(msg)
        return found

    def wait_for(
        self,
        to: str | None = None,
        subject_contains: str | None = None,
        timeout: float = 5.0,
        predicate: Callable[[EmailMessage], bool] | None = None,
        *,
        poll_interval: float = 0.05,
    ) -> EmailMessage:
        """The newest message matching (see :meth:`find`), waiting up to ``timeout`` seconds
        for one to arrive. Raises :class:`TimeoutError` naming what is there instead."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(to, subject_contains, predicate)
            if found:
                return found[-1]
            if time.monotonic() >= deadline:
                seen = [f"{m.get('To')!s}: {m.get('Subject')!s}" for m in self.newest(5)]
                raise TimeoutError(
                    f"no message to={to!r} subject_contains={subject_contains!r} in "
                    f"{self.directory} after {timeout}s; newest: {seen}"
                )
            time.sleep(poll_interval)


# -- the command ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.smtp_sink``: run the sink until SIGTERM/SIGINT."""
    from eventpost.logs import configure_logging
    from eventpost.settings import Settings

    settings = Settings.from_env("smtp-sink")
    parser = argparse.ArgumentParser(prog="python -m devtools.smtp_sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=settings.smtp_port)
    parser.add_argument("--dir", type=Path, default=settings.data_dir / "mail")
    parser.add_argument(
        "--refuse", action="append", default=[], help="answer 550 to this address (repeatable)"
    )
    args = parser.parse_args(argv)
    configure_logging("smtp-sink", settings.log_level)
    # aiosmtpd logs every SMTP command at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    handler = FileSinkHandler(args.dir, refuse=args.refuse)
    sink = SmtpSink(args.dir, host=args.host, port=args.port, handler=handler)
    try:
        sink.start()
    except OSError as exc:
        log.error(
            "SMTP sink cannot listen",
            extra={"host": args.host, "port": args.port, "error": str(exc)},
        )
        return 1
    log.info(
        "SMTP sink listening",
        extra={"host": sink.host, "port": sink.port, "dir": str(args.dir.resolve())},
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sink.stop()
        log.info("SMTP sink stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
