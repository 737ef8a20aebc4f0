"""Consuming envelopes: manual acks, delayed retries, a parking queue, reconnects.

How a message goes through a :class:`Consumer` (see :mod:`eventpost.messaging.topology` for
the queues):

1. The body is parsed. Not a valid envelope: it is published to ``<queue>.parked`` with header
   ``x-park-reason: malformed`` and acked.
2. The handler runs with :data:`eventpost.logs.request_id_var` set to the envelope's request ID
   and :data:`attempt_var` to the attempt number (1 on first delivery).
3. The handler returns: the message is acked. It raises :class:`PermanentError`:
   ``on_exhausted(envelope, error)`` is called and the message parked (``permanent``). It
   raises anything else: the message is published (with confirms) to the delay queue of the
   n-th delay (``<queue>.retry.<ms>ms``)
   with ``x-attempt: n+1`` (n = this attempt) and then acked; after the TTL of that delay
   queue the broker puts it back on ``<queue>``. When attempt ``len(retry_delays) + 1``
   fails, ``on_exhausted`` is called and the message parked (``exhausted``).

Retried and parked copies keep the body and properties and carry ``x-attempt``, ``x-error``
and ``x-original-routing-key`` (a message back from a delay queue is delivered with the
queue's name as routing key; the envelope's ``type`` is unchanged).

A message is acked only after its outcome is safe in the broker, so a crash at any point
makes the broker redeliver it: delivery is at-least-once and handlers must be idempotent
(deduplicate by ``envelope.id``).

The handler runs in a thread of its own (always the same one for a consumer) while the
consumer's thread keeps the connection alive (heartbeats), so a slow handler does not get the
connection dropped. Objects a handler creates lazily, like a :class:`Publisher`, therefore
stay in one thread, as pika requires.
"""

from __future__ import annotations

import contextvars
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from eventpost.logs import request_id_var
from eventpost.messaging.envelope import REQUEST_ID_HEADER, Envelope, MalformedMessage
from eventpost.messaging.topology import (
    EXCHANGE,
    close_quietly,
    connection_parameters,
    declare_consumer_topology,
    default_connection_name,
    parked_queue_name,
    retry_queue_name,
)

log = logging.getLogger(__name__)

#: The attempt number of the message being handled (1 on first delivery, 2 on the first
#: retry, ...), set while a :class:`Consumer`'s handler runs; None outside handlers.
attempt_var: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "eventpost_message_attempt", default=None
)

ATTEMPT_HEADER = "x-attempt"
PARK_REASON_HEADER = "x-park-reason"
ERROR_HEADER = "x-error"
ORIGINAL_ROUTING_KEY_HEADER = "x-original-routing-key"

Handler = Callable[[Envelope], None]
OnExhausted = Callable[[Envelope, BaseException], None]

# Connection or channel trouble: the consumer reconnects.
_CONNECTION_TROUBLE = (pika.exceptions.AMQPError, OSError)
# Longest wait for I/O between checks of the stop flag (stop() from a signal handler cannot
# wake the connection, see Consumer.stop).
_POLL_SECONDS = 0.5


class PermanentError(Exception):
    """Raised by a handler for a message that can never succeed (e.g. an invalid payload):
    it is parked at once instead of being retried."""


class _ConsumerCancelled(Exception):
    """The broker cancelled our consumer (e.g. the queue was deleted)."""


def backoff_delay(
    failures: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with jitter: ``min(cap, base * 2**failures)`` scaled by a random
    factor in [0.5, 1), so many clients that lost the broker together do not return together.
    """
    return min(cap, base * (2 ** min(failures, 32))) * (0.5 + rand() / 2)


@dataclass(frozen=True)
class _Delivery:
    tag: int
    routing_key: str
    properties: pika.spec.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def original_routing_key(self) -> str:
        """The key it was first published with (a retried message comes back from its delay
        queue with the queue's name as routing key)."""
        return str(self.headers.get(ORIGINAL_ROUTING_KEY_HEADER) or self.routing_key)

    @property
    def attempt(self) -> int:
        raw = self.headers.get(ATTEMPT_HEADER, 1)
        try:
            attempt = int(raw)
        except (TypeError, ValueError):
            return 1
        return max(attempt, 1)


@dataclass(frozen=True)
class _Outcome:
    action: Literal["ack", "retry", "park"]
    reason: str = ""
    error: BaseException | None = None


def _noop() -> None:
    return None


class Consumer:
    """Consumes envelopes from a durable queue bound to the EventPost exchange.

    ``queue``: the queue's name, one per consuming part and purpose
    (e.g. ``email-sender.email.send``); ``bindings``: the routing keys it receives;
    ``handler(envelope)``: does the work, must be idempotent; ``retry_delays``: seconds
    before each retry (e.g. ``Settings.retry_delays``), so a message is tried
    ``len(retry_delays) + 1`` times; ``prefetch``: unacked messages the broker may push
    ahead; ``on_exhausted(envelope, error)``: called once when a message is given up
    (PermanentError or out of retries), before it is parked, in the handler's thread (an
    exception from it is logged and the message parked anyway); ``reconnect_backoff``:
    (first, longest) delay between reconnects.

    The attempt number of the message being handled is available to the handler as
    ``attempt_var.get()`` (see :data:`attempt_var`) and as :attr:`current_attempt`;
    :attr:`max_attempts` is the last one.

    :meth:`run` blocks, consuming and reconnecting, until :meth:`stop`. A stopped consumer
    stays stopped (make a new one to consume again).
    """

    def __init__(
        self,
        amqp_url: str,
        queue: str,
        bindings: Sequence[str],
        handler: Handler,
        *,
        retry_delays: Sequence[float],
        prefetch: int = 10,
        on_exhausted: OnExhausted | None = None,
        reconnect_backoff: tuple[float, float] = (0.5, 30.0),
        exchange: str = EXCHANGE,
        connection_name: str | None = None,
    ) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if any(delay <= 0 for delay in retry_delays):
            raise ValueError("retry delays must be positive")
        self.amqp_url = amqp_url
        self.queue = queue
        self.bindings = tuple(bindings)
        self.handler = handler
        self.retry_delays = tuple(float(d) for d in retry_delays)
        self.prefetch = prefetch
        self.on_exhausted = on_exhausted
        self.reconnect_backoff = reconnect_backoff
        self.exchange = exchange
        self.connection_name = connection_name or default_connection_name(f"consumer-{queue}")
        self._stop_requested = False
        self._wake = threading.Event()
        self._run_thread: int | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._publish_channel: BlockingChannel | None = None
        self._cancelled_by_broker = False
        self._current_attempt: int | None = None

    @property
    def max_attempts(self) -> int:
        """How many times a message is tried before it is given up."""
        return len(self.retry_delays) + 1

    @property
    def current_attempt(self) -> int | None:
        """The attempt number of the message being handled now, None when idle."""
        return self._current_attempt

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop_requested

    def stop(self) -> None:
        """Ask :meth:`run` to return once the message being handled is finished and settled
        (acked, retried or parked); messages fetched ahead are handed back to the broker.

        Safe from a signal handler and from any thread: it only sets a flag, plus, from
        another thread, wakes the connection (which a signal handler must not do: that takes
        a lock the interrupted thread may hold). From a signal handler, run() notices within
        half a second."""
        self._stop_requested = True
        if threading.get_ident() == self._run_thread:
            return
        self._wake.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(_noop)
            except Exception:  # closing or closed: run() notices anyway
                log.debug("could not wake the consumer connection", exc_info=True)

    def run(self) -> None:
        """Consume until :meth:`stop`; reconnect with backoff whenever the connection or
        channel is lost (unacked messages are then redelivered by the broker)."""
        self._run_thread = threading.get_ident()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"handler-{self.queue}")
        failures = 0
        try:
            while not self._stop_requested:
                try:
                    self._connect()
                    failures = 0
                    log.info("consuming", extra={"queue": self.queue})
                    self._consume(executor)
                except (*_CONNECTION_TROUBLE, _ConsumerCancelled) as exc:
                    if not self._stop_requested:
                        log.warning(
                            "lost the broker connection",
                            extra={"queue": self.queue, "error": repr(exc)},
                        )
                finally:
                    self._disconnect()
                if self._stop_requested:
                    break
                delay = backoff_delay(failures, *self.reconnect_backoff)
                failures += 1
                log.info("reconnecting", extra={"queue": self.queue, "in_seconds": delay})
                self._sleep(delay)
        finally:
            # Lets a handler still running after a connection loss finish (its message is
            # redelivered by the broker).
            executor.shutdown(wait=True)
            self._run_thread = None
            log.info("consumer stopped", extra={"queue": self.queue})

    # -- connection ------------------------------------------------------------------------

    def _connect(self) -> None:
        params = connection_parameters(self.amqp_url, self.connection_name)
        self._connection = pika.BlockingConnection(params)
        self._cancelled_by_broker = False
        channel = self._connection.channel()
        declare_consumer_topology(
            channel, self.queue, self.bindings, self.retry_delays, exchange=self.exchange
        )
        channel.basic_qos(prefetch_count=self.prefetch)
        channel.add_on_cancel_callback(self._on_cancelled)
        publish_channel = self._connection.channel()
        publish_channel.confirm_delivery()
        self._channel, self._publish_channel = channel, publish_channel

    def _disconnect(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._publish_channel = None
        if connection is not None:
            close_quietly(connection)

    def _on_cancelled(self, _frame: Any) -> None:
        self._cancelled_by_broker = True

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop_requested:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.wait(min(remaining, _POLL_SECONDS))

    # -- the consuming loop (the connection's thread) ----------------------------------------

    def _consume(self, executor: ThreadPoolExecutor) -> None:
        connection, channel = self._connection, self._channel
        assert connection is not None and channel is not None
        fetched: deque[_Delivery] = deque()

        def on_message(
            _channel: BlockingChannel,
            method: pika.spec.Basic.Deliver,
            properties: pika.spec.BasicProperties,
            body: bytes,
        ) -> None:
            fetched.append(_Delivery(method.delivery_tag, method.routing_key, properties, body))

        consumer_tag = channel.basic_consume(self.queue, on_message, auto_ack=False)
        job: Future[_Outcome] | None = None
        delivery: _Delivery | None = None
        while True:
            if job is not None and delivery is not None and job.done():
                self._settle(delivery, job.result())
                job = delivery = None
                continue
            if job is None:
                if self._stop_requested:
                    break
                if self._cancelled_by_broker:
                    raise _ConsumerCancelled(f"the broker cancelled the consumer of {self.queue}")
                if fetched:
                    delivery = fetched.popleft()
                    job = self._start(delivery, executor, connection)
                    if job is None:
                        delivery = None
                    continue
            connection.process_data_events(time_limit=_POLL_SECONDS)
        channel.basic_cancel(consumer_tag)
        for left in fetched:
            channel.basic_nack(left.tag, requeue=True)

    def _start(
        self,
        delivery: _Delivery,
        executor: ThreadPoolExecutor,
        connection: pika.BlockingConnection,
    ) -> Future[_Outcome] | None:
        """Hand a delivery to the handler thread; a malformed one is parked right here."""
        try:
            envelope = Envelope.from_bytes(delivery.body)
        except MalformedMessage as exc:
            log.error(
                "parking a message that is not a valid envelope",
                extra={
                    "queue": self.queue,
                    "routing_key": delivery.routing_key,
                    "message_id": delivery.properties.message_id,
                    "error": str(exc),
                },
            )
            self._settle(delivery, _Outcome("park", "malformed", exc))
            return None
        job = executor.submit(
            contextvars.copy_context().run, self._handle, envelope, delivery.attempt
        )

        def wake(_job: Future[_Outcome]) -> None:
            try:
                connection.add_callback_threadsafe(_noop)
            except Exception:  # the connection is gone; run() reconnects
                log.debug("could not wake the consumer connection", exc_info=True)

        job.add_done_callback(wake)
        return job

    def _settle(self, delivery: _Delivery, outcome: _Outcome) -> None:
        """Make the outcome safe in the broker, then ack."""
        channel = self._channel
        assert channel is not None
        if outcome.action == "retry":
            delay = self.retry_delays[delivery.attempt - 1]
            self._republish(
                delivery,
                retry_queue_name(self.queue, delay),
                {
                    ATTEMPT_HEADER: delivery.attempt + 1,
                    ERROR_HEADER: _describe(outcome.error),
                    ORIGINAL_ROUTING_KEY_HEADER: delivery.original_routing_key,
                },
            )
        elif outcome.action == "park":
            self._republish(
                delivery,
                parked_queue_name(self.queue),
                {
                    PARK_REASON_HEADER: outcome.reason,
                    ERROR_HEADER: _describe(outcome.error),
                    ATTEMPT_HEADER: delivery.attempt,
                    ORIGINAL_ROUTING_KEY_HEADER: delivery.original_routing_key,
                },
            )
        channel.basic_ack(delivery.tag)

    def _republish(self, delivery: _Delivery, queue: str, headers: dict[str, Any]) -> None:
        """Publish a copy of ``delivery`` straight to ``queue`` and wait for the confirm."""
        channel = self._publish_channel
        assert channel is not None
        original = delivery.properties
        merged = delivery.headers
        merged.pop("x-death", None)  # the broker's own history of dead-lettering
        merged.update(headers)
        properties = pika.BasicProperties(
            content_type=original.content_type,
            content_encoding=original.content_encoding,
            headers=merged,
            delivery_mode=pika.DeliveryMode.Persistent,
            priority=original.priority,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            message_id=original.message_id,
            timestamp=original.timestamp,
            type=original.type,
            app_id=original.app_id,
        )
        channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=delivery.body,
            properties=properties,
            mandatory=True,
        )

    # -- the handler thread --------------------------------------------------------------------

    def _handle(self, envelope: Envelope, attempt: int) -> _Outcome:
        request_id_var.set(envelope.request_id)
        attempt_var.set(attempt)
        self._current_attempt = attempt
        info = {
            "queue": self.queue,
            "message_type": envelope.type,
            "message_id": envelope.id,
            "attempt": attempt,
        }
        started = time.monotonic()
        try:
            self.handler(envelope)
        except PermanentError as exc:
            log.warning("handler failed for good; parking the message", exc_info=True, extra=info)
            self._give_up(envelope, exc)
            return _Outcome("park", "permanent", exc)
        except Exception as exc:
            if attempt <= len(self.retry_delays):
                log.warning(
                    "handler failed; retrying later",
                    exc_info=True,
                    extra={**info, "retry_in_seconds": self.retry_delays[attempt - 1]},
                )
                return _Outcome("retry", error=exc)
            log.error("handler failed on the last attempt; parking", exc_info=True, extra=info)
            self._give_up(envelope, exc)
            return _Outcome("park", "exhausted", exc)
        finally:
            self._current_attempt = None
        log.info(
            "message handled",
            extra={**info, "duration_ms": round((time.monotonic() - started) * 1000, 1)},
        )
        return _Outcome("ack")

    def _give_up(self, envelope: Envelope, error: BaseException) -> None:
        if self.on_exhausted is None:
            return
        try:
            self.on_exhausted(envelope, error)
        except Exception:
            log.exception(
                "on_exhausted failed; parking the message anyway",
                extra={"queue": self.queue, "message_id": envelope.id},
            )


def _describe(error: BaseException | None) -> str:
    return "" if error is None else f"{type(error).__name__}: {error}"[:500]


__all__ = [
    "ATTEMPT_HEADER",
    "PARK_REASON_HEADER",
    "REQUEST_ID_HEADER",
    "Consumer",
    "PermanentError",
    "attempt_var",
    "backoff_delay",
]
