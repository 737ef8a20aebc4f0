"""Consuming envelopes: manual acks, delayed retries, a parking queue, reconnects.

How a message goes through a :class:`Consumer` (see :mod:`eventpost.messaging.topology` for
the queues, :mod:`eventpost.messaging.delivery` for the decisions):

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
queue's name as routing key; the envelope's ``type`` is unchanged); parked ones also
``x-park-reason`` and ``x-parked-at``. ``invoke parked --replay``
(:mod:`eventpost.messaging.parking`) moves parked messages back to ``<queue>`` at attempt 1,
counting ``x-replayed`` (the handler sees it as :data:`replayed_var`).

A message is acked only after its outcome is safe in the broker, so a crash at any point
makes the broker redeliver it: delivery is at-least-once and handlers must be idempotent
(deduplicate by ``envelope.id``).

The handler runs in a thread of its own (always the same one for a consumer) while the
consumer's thread keeps the connection alive (heartbeats), so a slow handler does not get the
connection dropped. Objects a handler creates lazily, like a :class:`Publisher`, therefore
stay in one thread, as pika requires.

Connecting and reconnecting is :func:`eventpost.loops.run_rounds`: one round is one
connection, from connecting until it is lost (then the round fails and the loop waits its
backoff) or until :meth:`Consumer.stop`. The backoff starts again from its first delay once
a connection is up.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from eventpost.loops import Backoff, run_rounds
from eventpost.messaging.delivery import (
    ATTEMPT_HEADER,
    PARK_REASON_HEADER,
    Delivery,
    DeliveryHandler,
    Handler,
    OnBatchEnd,
    OnExhausted,
    Outcome,
    PermanentError,
    Settler,
    attempt_var,
    replayed_var,
)
from eventpost.messaging.envelope import REQUEST_ID_HEADER, Envelope, MalformedMessage
from eventpost.messaging.topology import (
    EXCHANGE,
    close_quietly,
    connection_parameters,
    declare_consumer_topology,
    default_connection_name,
    queue_arguments,
)

log = logging.getLogger(__name__)

# Connection or channel trouble: the consumer reconnects.
_CONNECTION_TROUBLE = (pika.exceptions.AMQPError, OSError)
# Longest wait for I/O between checks of the stop flag (stop() from a signal handler cannot
# wake the connection, see Consumer.stop).
_POLL_SECONDS = 0.5


class _ConsumerCancelled(Exception):
    """The broker cancelled our consumer (e.g. the queue was deleted)."""


class _StopFlag(threading.Event):
    """A consumer's stop event that a signal handler may raise: :meth:`request` only sets a
    flag (setting the event takes a lock the interrupted thread may hold), and waits look at
    that flag at least every ``_POLL_SECONDS``."""

    def __init__(self) -> None:
        super().__init__()
        self.requested = False

    def request(self) -> None:
        """Stop, without waking anyone (safe in a signal handler)."""
        self.requested = True

    def is_set(self) -> bool:
        return self.requested or super().is_set()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            remaining = _POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            super().wait(min(remaining, _POLL_SECONDS))
        return True


def _noop() -> None:
    return None


def _wake(connection: pika.BlockingConnection) -> None:
    """Make ``connection``'s thread return from ``process_data_events`` (from another thread)."""
    try:
        connection.add_callback_threadsafe(_noop)
    except Exception:  # closing or closed: the consumer notices anyway
        log.debug("could not wake the consumer connection", exc_info=True)


class Consumer:
    """Consumes envelopes from a durable queue bound to the EventPost exchange.

    ``queue``: the queue's name, one per consuming part and purpose
    (e.g. ``email-sender.jobs``); ``bindings``: the routing keys it receives;
    ``handler(envelope)``: does the work, must be idempotent; ``retry_delays``: seconds
    before each retry (e.g. ``Settings.retry_delays``), so a message is tried
    ``len(retry_delays) + 1`` times; ``prefetch``: unacked messages the broker may push
    ahead; ``on_exhausted(envelope, error)``: called once when a message is given up
    (PermanentError or out of retries), before it is parked, in the handler's thread (an
    exception from it is logged and the message parked anyway); ``reconnect_backoff``:
    (first, longest) delay between reconnects; ``queue_type``: ``classic`` or ``quorum``
    for the queue, its delay queues and its parking queue (``Settings.amqp_queue_type``).
    ``amqp_url`` may list several nodes, comma separated: each reconnect tries them in
    order, so the consumer moves to a live node by itself.

    ``batch_size`` > 1 hands the handler thread up to that many of the messages already
    fetched at once (it never waits for more to arrive): the handler runs on each in turn,
    then ``on_batch_end()`` finishes what the handler left for the end of the batch (e.g.
    confirms of outcomes published together) and names the messages whose part of it
    failed; those are decided as if their handler had raised that error. Only then is the
    batch settled, so a crash mid-batch leaves every message of it unacked (redelivered).

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
        queue_type: str = "classic",
        batch_size: int = 1,
        on_batch_end: OnBatchEnd | None = None,
    ) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if any(delay <= 0 for delay in retry_delays):
            raise ValueError("retry delays must be positive")
        self.amqp_url = amqp_url
        self.queue = queue
        self.bindings = tuple(bindings)
        self.handler = handler
        self.retry_delays = tuple(float(d) for d in retry_delays)
        self.prefetch = prefetch
        self.on_exhausted = on_exhausted
        self.batch_size = batch_size
        self.on_batch_end = on_batch_end
        self.reconnect_backoff = reconnect_backoff
        self.exchange = exchange
        queue_arguments(queue_type)  # fail early on an unknown type
        self.queue_type = queue_type
        self.connection_name = connection_name or default_connection_name(f"consumer-{queue}")
        self._deliveries = DeliveryHandler(queue, handler, self.retry_delays, on_exhausted)
        self._stop = _StopFlag()
        self._run_thread: int | None = None
        self._fatal: BaseException | None = None
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._settler: Settler | None = None
        self._cancelled_by_broker = False

    @property
    def max_attempts(self) -> int:
        """How many times a message is tried before it is given up."""
        return len(self.retry_delays) + 1

    @property
    def current_attempt(self) -> int | None:
        """The attempt number of the message being handled now, None when idle."""
        return self._deliveries.current_attempt

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask :meth:`run` to return once the message being handled is finished and settled
        (acked, retried or parked); messages fetched ahead are handed back to the broker.

        Safe from a signal handler and from any thread: it only sets a flag, plus, from
        another thread, wakes the connection (which a signal handler must not do: that takes
        a lock the interrupted thread may hold). From a signal handler, run() notices within
        half a second."""
        self._stop.request()
        if threading.get_ident() == self._run_thread:
            return
        self._stop.set()
        connection = self._connection
        if connection is not None:
            _wake(connection)

    def run(self) -> None:
        """Consume until :meth:`stop`; reconnect with backoff whenever the connection or
        channel is lost (unacked messages are then redelivered by the broker)."""
        self._run_thread = threading.get_ident()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"handler-{self.queue}")
        backoff = Backoff(*self.reconnect_backoff)
        try:
            run_rounds(
                lambda: self._connected_round(executor, backoff),
                self._stop,
                what=f"consuming {self.queue}",
                logger=log,
                backoff=backoff,
            )
        finally:
            # Lets a handler still running after a connection loss finish (its message is
            # redelivered by the broker).
            executor.shutdown(wait=True)
            self._run_thread = None
            log.info("consumer stopped", extra={"queue": self.queue})
        if self._fatal is not None:
            raise self._fatal

    # -- connection ------------------------------------------------------------------------

    def _connected_round(self, executor: ThreadPoolExecutor, backoff: Backoff) -> float:
        """One connection's life: connect, consume until stopped. A lost connection raises
        (the loop backs off and calls again); a failure that is not the broker's ends
        :meth:`run` with it."""
        try:
            self._connect()
            backoff.reset()
            log.info("consuming", extra={"queue": self.queue})
            self._consume(executor)
        except (*_CONNECTION_TROUBLE, _ConsumerCancelled):
            if not self.stopping:
                raise
        except Exception as exc:
            self._fatal = exc
            self._stop.request()
        finally:
            self._disconnect()
        return 0.0

    def _connect(self) -> None:
        params = connection_parameters(self.amqp_url, self.connection_name)
        self._connection = pika.BlockingConnection(params)
        self._cancelled_by_broker = False
        channel = self._connection.channel()
        declare_consumer_topology(
            channel,
            self.queue,
            self.bindings,
            self.retry_delays,
            exchange=self.exchange,
            queue_type=self.queue_type,
        )
        channel.basic_qos(prefetch_count=self.prefetch)
        channel.add_on_cancel_callback(self._on_cancelled)
        publish_channel = self._connection.channel()
        publish_channel.confirm_delivery()
        self._channel = channel
        self._settler = Settler(self.queue, self.retry_delays, channel, publish_channel)

    def _disconnect(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._settler = None
        if connection is not None:
            close_quietly(connection)

    def _on_cancelled(self, _frame: Any) -> None:
        self._cancelled_by_broker = True

    # -- the consuming loop (the connection's thread) ----------------------------------------

    def _consume(self, executor: ThreadPoolExecutor) -> None:
        connection, channel, settler = self._connection, self._channel, self._settler
        assert connection is not None and channel is not None and settler is not None
        fetched: deque[Delivery] = deque()

        def on_message(
            _channel: BlockingChannel,
            method: pika.spec.Basic.Deliver,
            properties: pika.spec.BasicProperties,
            body: bytes,
        ) -> None:
            fetched.append(Delivery(method.delivery_tag, method.routing_key, properties, body))

        consumer_tag = channel.basic_consume(self.queue, on_message, auto_ack=False)
        job: Future[list[Outcome]] | None = None
        batch: list[Delivery] = []
        while True:
            if job is not None and job.done():
                for delivery, outcome in zip(batch, job.result(), strict=True):
                    settler.settle(delivery, outcome)
                job, batch = None, []
                continue
            if job is None:
                if self.stopping:
                    break
                if self._cancelled_by_broker:
                    raise _ConsumerCancelled(f"the broker cancelled the consumer of {self.queue}")
                if fetched:
                    batch, job = self._start(fetched, executor, connection, settler)
                    continue
            connection.process_data_events(time_limit=_POLL_SECONDS)
        channel.basic_cancel(consumer_tag)
        for left in fetched:
            channel.basic_nack(left.tag, requeue=True)

    def _start(
        self,
        fetched: deque[Delivery],
        executor: ThreadPoolExecutor,
        connection: pika.BlockingConnection,
        settler: Settler,
    ) -> tuple[list[Delivery], Future[list[Outcome]] | None]:
        """Hand up to ``batch_size`` fetched deliveries to the handler thread (malformed
        ones are parked right here); returns them and the job, or ([], None)."""
        batch: list[tuple[Delivery, Envelope]] = []
        while fetched and len(batch) < self.batch_size:
            delivery = fetched.popleft()
            try:
                batch.append((delivery, Envelope.from_bytes(delivery.body)))
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
                settler.settle(delivery, Outcome("park", "malformed", exc))
        if not batch:
            return [], None
        job = executor.submit(self._handle_batch, contextvars.copy_context(), batch)
        job.add_done_callback(lambda _job: _wake(connection))
        return [delivery for delivery, _ in batch], job

    def _handle_batch(
        self, base: contextvars.Context, batch: list[tuple[Delivery, Envelope]]
    ) -> list[Outcome]:
        """In the handler thread: each envelope of ``batch`` in a context of its own, then
        ``on_batch_end``; the outcome of each, in order."""
        runs = []
        for delivery, envelope in batch:
            context = base.copy()
            outcome = context.run(self._deliveries, envelope, delivery.attempt, delivery.replayed)
            runs.append((context, delivery, envelope, outcome))
        if self.on_batch_end is None:
            return [outcome for *_, outcome in runs]
        try:
            failures = base.run(self.on_batch_end)
        except Exception as exc:  # nothing of the batch's deferred work is known to be done
            log.exception("finishing a batch failed", extra={"queue": self.queue})
            failures = {envelope.id: exc for _, _, envelope, _ in runs}
        outcomes = []
        for context, delivery, envelope, outcome in runs:
            error = failures.get(envelope.id)
            if outcome.action == "ack" and error is not None:
                outcome = context.run(
                    self._deliveries.failed_later, envelope, delivery.attempt, error
                )
            outcomes.append(outcome)
        return outcomes


__all__ = [
    "ATTEMPT_HEADER",
    "PARK_REASON_HEADER",
    "REQUEST_ID_HEADER",
    "Consumer",
    "PermanentError",
    "attempt_var",
    "replayed_var",
]
