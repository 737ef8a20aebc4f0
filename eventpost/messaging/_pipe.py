"""Publishing many messages with their confirms in flight together (for :class:`Publisher`).

pika's ``BlockingChannel`` in confirm mode waits for each message's confirm before the next
one goes out: one round trip to the broker per message (~1 ms here, and 0.2 ms of CPU in
pika's blocking machinery). A relay with a batch of a hundred events pays that a hundred
times. :class:`ConfirmPipe` drives pika's asynchronous ``SelectConnection`` (its public API:
``confirm_delivery(ack_nack_callback)``, ``add_on_return_callback``) in the caller's thread:
it writes a whole batch, then runs the connection's I/O loop until every message is acked or
nacked (the broker acks several at once with ``multiple``), the connection drops, or time
runs out. Order is kept: one channel, messages written in the given order.

The I/O loop runs only inside this class's calls; between them nothing reads the socket, so
a caller that idles calls :meth:`ConfirmPipe.keepalive` to answer heartbeats (as a relay
does between polls).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop, SelectConnection

#: What became of one message: None (confirmed), RETURNED (confirmed, but no queue was bound
#: to its key), NACKED, or the exception that kept it from being confirmed.
RETURNED = "returned"
NACKED = "nacked"


@dataclass(frozen=True)
class Outgoing:
    """One message for :meth:`ConfirmPipe.publish`."""

    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    message_id: str


def _noop() -> None:
    pass


class ConfirmPipe:
    """One connection and confirm-mode channel to the first broker of ``parameters`` that
    answers; publishes on ``exchange`` (persistent and mandatory are the callers': the
    properties and :meth:`publish`'s ``mandatory``)."""

    def __init__(self, parameters: Sequence[pika.URLParameters], exchange: str) -> None:
        self.parameters = list(parameters)
        self.exchange = exchange
        self._ioloop = IOLoop()
        self._connection: SelectConnection | None = None
        self._channel: Any = None
        self._broken: BaseException | None = None
        self._next_tag = 1
        self._pending: dict[int, int] = {}  # delivery tag -> index into the batch
        self._outcomes: list[Any] = []
        self._ids: list[str] = []
        self._returned: set[str] = set()
        self._active = False
        self._closed = False

    @property
    def is_open(self) -> bool:
        """Whether the connection and channel are usable."""
        return (
            self._broken is None
            and self._connection is not None
            and self._connection.is_open
            and self._channel is not None
            and self._channel.is_open
        )

    # -- opening ---------------------------------------------------------------------------

    def open(self, timeout: float) -> None:
        """Connect and put a channel in confirm mode; raises
        :class:`pika.exceptions.AMQPConnectionError` when no broker answers in ``timeout``
        (then :meth:`close` it all the same). Called once per pipe."""
        result: list[Any] = []

        def on_done(connection_or_error: Any) -> None:
            result.append(connection_or_error)

        deadline = time.monotonic() + timeout
        workflow = SelectConnection.create_connection(
            self.parameters, on_done, custom_ioloop=self._ioloop
        )
        if not self._run_until(lambda: bool(result), deadline):
            workflow.abort()
            self._run_until(lambda: bool(result), time.monotonic() + 1.0)
            raise pika.exceptions.AMQPConnectionError("timed out connecting to the broker")
        outcome = result[0]
        if not isinstance(outcome, SelectConnection):
            raise pika.exceptions.AMQPConnectionError(repr(outcome))
        self._connection = outcome
        outcome.add_on_close_callback(self._on_connection_closed)
        ready: list[bool] = []
        outcome.channel(on_open_callback=lambda channel: self._on_channel(channel, ready))
        if not self._run_until(lambda: bool(ready) or self._broken is not None, deadline):
            self.close()
            raise pika.exceptions.AMQPConnectionError("timed out opening a confirm channel")
        if self._broken is not None:
            error = self._broken
            self.close()
            raise pika.exceptions.AMQPConnectionError(repr(error))

    def _on_channel(self, channel: Any, ready: list[bool]) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        self._next_tag = 1
        channel.confirm_delivery(
            ack_nack_callback=self._on_confirm, callback=lambda _frame: ready.append(True)
        )

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self, messages: Sequence[Outgoing], *, timeout: float, mandatory: bool = True
    ) -> list[Any]:
        """Write ``messages`` in order and wait, at most ``timeout`` seconds, for their
        confirms; returns each one's outcome (see :data:`RETURNED`). A message that could
        not even be written (e.g. a routing key longer than AMQP allows) gets its
        exception; one left without a confirm (connection lost, time out) gets
        :class:`pika.exceptions.AMQPConnectionError`, and the pipe is closed."""
        self._outcomes = [None] * len(messages)
        self._ids = [message.message_id for message in messages]
        self._pending = {}
        self._returned = set()
        channel = self._channel
        for index, message in enumerate(messages):
            if not self.is_open:
                self._outcomes[index] = self._lost()
                continue
            try:
                channel.basic_publish(
                    exchange=self.exchange,
                    routing_key=message.routing_key,
                    body=message.body,
                    properties=message.properties,
                    mandatory=mandatory,
                )
            except (pika.exceptions.AMQPError, ValueError, TypeError) as exc:
                # Not framed: nothing went out, so the channel's tags did not move on.
                self._outcomes[index] = exc
                continue
            self._pending[self._next_tag] = index
            self._next_tag += 1
        deadline = time.monotonic() + timeout
        if not self._run_until(lambda: not self._pending or not self.is_open, deadline):
            self.close()
        for index in self._pending.values():
            self._outcomes[index] = self._lost()
        self._pending = {}
        return self._outcomes

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = (
            [tag for tag in self._pending if tag <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        for tag in tags:
            index = self._pending.pop(tag, None)
            if index is None:
                continue
            if not acked:
                self._outcomes[index] = NACKED
            elif self._ids[index] in self._returned:
                self._outcomes[index] = RETURNED

    def _on_return(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        # The broker sends a mandatory message's return before its ack.
        if properties.message_id:
            self._returned.add(properties.message_id)

    def _lost(self) -> BaseException:
        cause = self._broken
        text = f"connection lost before the confirm: {cause!r}" if cause else "no confirm in time"
        return pika.exceptions.AMQPConnectionError(text)

    # -- the I/O loop ----------------------------------------------------------------------

    def _run_until(self, done: Callable[[], bool], deadline: float) -> bool:
        """Run the I/O loop until ``done()`` or ``deadline`` (monotonic); whether done.
        Each poll returns on the first socket event, or after at most 50 ms."""
        if not self._active:
            self._ioloop.activate_poller()
            self._active = True
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            timer = self._ioloop.call_later(min(remaining, 0.05), _noop)
            self._ioloop.poll()
            self._ioloop.process_timeouts()
            self._ioloop.remove_timeout(timer)
        return True

    def keepalive(self) -> None:
        """Handle whatever the broker sent meanwhile (heartbeats, a close), without waiting."""
        if self._connection is None:
            return
        polled: list[bool] = []
        self._ioloop.add_callback_threadsafe(lambda: polled.append(True))
        self._run_until(lambda: bool(polled), time.monotonic() + 0.05)

    def _on_channel_closed(self, _channel: Any, reason: BaseException) -> None:
        self._broken = self._broken or reason
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    def _on_connection_closed(self, _connection: Any, reason: BaseException) -> None:
        self._broken = self._broken or reason

    def close(self) -> None:
        """Close the connection (waiting briefly for the broker's close-ok) and release the
        I/O loop (its poller and wake-up sockets). A closed pipe is not opened again."""
        if self._closed:
            return
        self._closed = True
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                connection.close()
        if connection is not None:
            self._run_until(lambda: connection.is_closed, time.monotonic() + 1.0)
        if self._active:
            self._ioloop.deactivate_poller()
            self._active = False
        self._ioloop.close()
