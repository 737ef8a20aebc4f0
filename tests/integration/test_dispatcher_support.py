"""Helpers of the dispatcher's integration tests (this module holds no tests): reminders
seeded straight into a real SqliteStore, the dispatcher / worker / email-sender as real
processes, and a TCP proxy in front of RabbitMQ that a test can take down and bring back
(the shared broker itself must never be restarted: other engineers' tests use it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

from eventpost.storage.sqlite import SqliteStore
from eventpost.timeutil import format_time, utcnow
from services.notifications import domain
from services.notifications.store import NotificationsStore
from tests.integration._amqp import REPO_ROOT, Broker

EVENT = {
    "id": "ev-int",
    "title": "Integration night",
    "starts_at": "2030-01-01T20:00:00Z",
    "place": {"name": "Hall", "address": "2 Side St"},
    "updated_at": "2026-01-01T00:00:00.000000Z",
}


def seed(
    store: SqliteStore, count: int, send_at: Callable[[int], datetime], prefix: str = "r"
) -> list[str]:
    """``count`` scheduled reminders (one transaction), reminder ``i`` due at ``send_at(i)``;
    each to ``<prefix><i>@example.com``."""
    coll = NotificationsStore(store).collection
    ids = []
    with store.transaction():
        for i in range(count):
            at = send_at(i)
            doc = domain.new_reminder(
                reminder_id=f"{prefix}{i:05d}",
                owner=f"user{i % 7}",
                event_id=EVENT["id"],
                event=EVENT,
                user={"email": f"{prefix}{i}@example.com"},
                send_at=format_time(at),
                before=None,
                email=None,
                subject=None,
                message=None,
                now=at - timedelta(hours=1),
                request_id=f"seed-{i}",
            )
            coll.insert(doc)
            ids.append(doc["id"])
    return ids


def due_now(_i: int) -> datetime:
    return utcnow() - timedelta(seconds=1)


def job_keys(broker: Broker, queue: str) -> list[str]:
    """Idempotency keys of the email jobs now in ``queue`` (taken out of it)."""
    return [json.loads(body)["payload"]["idempotency_key"] for *_, body in broker.take_all(queue)]


def duplicates(keys: list[str]) -> dict[str, int]:
    return {k: n for k, n in Counter(keys).items() if n > 1}


class Part:
    """A process of ours (dispatcher, worker, email-sender), output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code (SIGKILL after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


def env_for(data_dir: Path, amqp_url: str, **extra: str) -> dict[str, str]:
    return {
        "DATA_DIR": str(data_dir),
        "AMQP_URL": amqp_url,
        "DISPATCH_INTERVAL": "0.2",
        "RETRY_DELAYS": "0.5,1,2",
        "LOG_LEVEL": "INFO",
        **extra,
    }


def dispatcher(
    name: str, env: dict[str, str], log_dir: Path, *args: str, pause_after_claim: float = 0.0
) -> Part:
    """``python -m services.notifications.dispatcher``; with ``pause_after_claim``, the test
    dispatcher of :mod:`tests.integration.pausing_dispatcher` that holds each batch of claims
    that many seconds."""
    if pause_after_claim:
        module = ["tests.integration.pausing_dispatcher", "--pause-after-claim"]
        argv = ["-m", *module, str(pause_after_claim), *args]
    else:
        argv = ["-m", "services.notifications.dispatcher", *args]
    return Part(name, argv, env, log_dir)


def worker(name: str, env: dict[str, str], log_dir: Path, *args: str) -> Part:
    return Part(name, ["-m", "services.notifications.worker", *args], env, log_dir)


def email_sender(name: str, env: dict[str, str], log_dir: Path, *args: str) -> Part:
    return Part(name, ["-m", "email_sender", *args], env, log_dir)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`down` closes the listener and every
    connection through it (to the processes behind it the broker is gone), :meth:`up` listens
    again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self._thread.start()

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))

    async def _up(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _down(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def up(self) -> None:
        self._call(self._up())

    def down(self) -> None:
        self._call(self._down())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextlib.contextmanager
def proxy_to(host: str, port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy((host, port))
    proxy.up()
    try:
        yield proxy
    finally:
        proxy.close()
