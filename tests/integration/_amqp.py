"""Helpers and fixtures for the messaging tests against the real RabbitMQ.

Every test works on its own exchange and queues (uuid-suffixed names) and deletes them after,
so tests of other engineers running at the same time on the same broker are not disturbed.
Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pika
import pika.exceptions
import pytest

from eventpost.messaging import Consumer
from eventpost.messaging.topology import retry_queue_name
from eventpost.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPER_MODULE = "tests.integration.messaging_helpers"


#: Every retry delay the tests use: cleanup deletes the delay queues named after them.
TEST_DELAYS = (0.1, 0.2, 0.3, 0.5, 1.0, 2.0)


def amqp_url() -> str:
    return Settings.from_env().amqp_url


def unique(prefix: str) -> str:
    return f"test-{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds (a
    generous bound against hangs, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


Message = tuple[pika.spec.Basic.GetOk, pika.BasicProperties, bytes]


@dataclass
class Broker:
    """A test's view of the broker: its own exchange, a channel for inspecting queues, and
    cleanup of every queue it names."""

    url: str
    connection: pika.BlockingConnection
    exchange: str
    queues: list[str] = field(default_factory=list)

    def channel(self) -> pika.adapters.blocking_connection.BlockingChannel:
        return self.connection.channel()

    def queue_name(self, prefix: str = "q") -> str:
        name = unique(prefix)
        self.queues.append(name)
        return name

    def bound_queue(self, *keys: str) -> str:
        """A fresh durable queue bound to the test exchange with ``keys``."""
        name = self.queue_name("sink")
        ch = self.channel()
        ch.exchange_declare(self.exchange, "topic", durable=True)
        ch.queue_declare(name, durable=True)
        for key in keys:
            ch.queue_bind(name, self.exchange, routing_key=key)
        ch.close()
        return name

    def depth(self, queue: str) -> int:
        ch = self.channel()
        try:
            return ch.queue_declare(queue, passive=True).method.message_count
        finally:
            ch.close()

    def consumers(self, queue: str) -> int:
        """Consumers on ``queue`` (0 while it does not exist yet)."""
        ch = self.channel()
        try:
            return ch.queue_declare(queue, passive=True).method.consumer_count
        except pika.exceptions.ChannelClosedByBroker:
            return 0
        finally:
            if ch.is_open:
                ch.close()

    def take_all(self, queue: str) -> list[Message]:
        """Every message now in ``queue`` (removed from it)."""
        ch = self.channel()
        got = []
        try:
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    return got
                got.append((method, props, body))
        finally:
            ch.close()

    def publish_raw(
        self, routing_key: str, body: bytes, properties: pika.BasicProperties | None = None
    ) -> None:
        ch = self.channel()
        ch.confirm_delivery()
        ch.basic_publish(self.exchange, routing_key, body, properties, mandatory=True)
        ch.close()

    def cleanup(self) -> None:
        ch = self.channel()
        for queue in self.queues:
            retries = [retry_queue_name(queue, d) for d in TEST_DELAYS]
            for name in [queue, f"{queue}.parked", *retries]:
                ch.queue_delete(name)
        ch.exchange_delete(self.exchange)
        self.connection.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    url = amqp_url()
    params = pika.URLParameters(url)
    params.client_properties = {"connection_name": unique("test-inspector")}
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.AMQPConnectionError as exc:
        pytest.fail(
            f"RabbitMQ is not reachable at {url} ({exc!r}); start it with "
            "`rabbitmq-server -detached` or deselect with -m 'not rabbitmq'"
        )
    b = Broker(url=url, connection=connection, exchange=unique("ex"))
    b.channel().exchange_declare(b.exchange, "topic", durable=True)
    yield b
    b.cleanup()


@contextlib.contextmanager
def running(consumer: Consumer) -> Iterator[threading.Thread]:
    """Run ``consumer`` in a thread; stop it and wait for it on the way out."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run()
        except BaseException as exc:
            errors.append(exc)
            raise

    thread = threading.Thread(target=target, name=f"test-consumer-{consumer.queue}", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        consumer.stop()
        thread.join(30)
        assert not thread.is_alive(), "consumer did not stop"
    assert not errors, errors


def close_connections_named(name: str) -> int:
    """Close (as the broker) every connection whose client-provided name is ``name``; only
    this test's own connections, never anyone else's. Returns how many were closed."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    closed = 0
    marker = f'{{"connection_name","{name}"}}'
    for line in listing.stdout.splitlines():
        pid, _, props = line.partition("\t")
        if marker in props:
            subprocess.run(
                ["rabbitmqctl", "-q", "close_connection", pid, "closed by a messaging test"],
                capture_output=True,
                check=True,
                timeout=60,
            )
            closed += 1
    return closed


def helper_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m tests.integration.messaging_helpers ARGS`` from the repository root."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", HELPER_MODULE, *args],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def finish(process: subprocess.Popen[bytes], timeout: float = 30.0) -> tuple[int, str]:
    """Wait for a helper process; its exit code and output."""
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"helper process did not end:\n{out.decode(errors='replace')}")
    return process.returncode, out.decode(errors="replace")
