"""One delivery through a :class:`~eventpost.messaging.Consumer`: the handler's run, the
decision it leads to (ack, retry later, park) and making that decision safe in the broker.

- :class:`DeliveryHandler` runs the handler (in the consumer's handler thread) and decides:
  it returned, ack; it raised :class:`PermanentError`, park (``permanent``); it raised
  anything else, retry through the delay queue of this attempt, or park (``exhausted``) when
  this was the last attempt. A message given up is first handed to ``on_exhausted``.
- :class:`Settler` carries the decision out (in the connection's thread): the retry or parked
  copy is published with confirms, and only then is the delivery acked.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pika
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from eventpost.logs import request_id_var
from eventpost.messaging.envelope import Envelope
from eventpost.messaging.topology import parked_queue_name, retry_queue_name
from eventpost.timeutil import Clock, format_time, utcnow

log = logging.getLogger("eventpost.messaging.consumer")

#: The attempt number of the message being handled (1 on first delivery, 2 on the first
#: retry, ...), set while a :class:`Consumer`'s handler runs; None outside handlers.
attempt_var: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "eventpost_message_attempt", default=None
)
#: How many times an operator moved the message being handled back from its parking queue
#: (``invoke parked --replay``): 0 for a message never parked. A handler that remembers a
#: permanent failure tries such a message again instead of repeating the old outcome.
replayed_var: contextvars.ContextVar[int] = contextvars.ContextVar(
    "eventpost_message_replayed", default=0
)

ATTEMPT_HEADER = "x-attempt"
PARK_REASON_HEADER = "x-park-reason"
ERROR_HEADER = "x-error"
ORIGINAL_ROUTING_KEY_HEADER = "x-original-routing-key"
#: When a message was parked (a :func:`~eventpost.timeutil.format_time` string).
PARKED_AT_HEADER = "x-parked-at"
#: How many times it was replayed from its parking queue.
REPLAYED_HEADER = "x-replayed"

Handler = Callable[[Envelope], None]
OnExhausted = Callable[[Envelope, BaseException], None]
#: Called in the handler's thread after each batch (see :class:`~eventpost.messaging.Consumer`):
#: finishes the work the handler left for the end of the batch and returns, by envelope id,
#: the error of each message whose part of it failed (an empty mapping: all done).
OnBatchEnd = Callable[[], Mapping[str, BaseException]]


class PermanentError(Exception):
    """Raised by a handler for a message that can never succeed (e.g. an invalid payload):
    it is parked at once instead of being retried."""


@dataclass(frozen=True)
class Delivery:
    """A message as the broker delivered it."""

    tag: int
    routing_key: str
    properties: pika.spec.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, Any]:
        """A copy of the message's headers."""
        return dict(self.properties.headers or {})

    @property
    def original_routing_key(self) -> str:
        """The key it was first published with (a retried message comes back from its delay
        queue with the queue's name as routing key)."""
        return str(self.headers.get(ORIGINAL_ROUTING_KEY_HEADER) or self.routing_key)

    @property
    def attempt(self) -> int:
        """Which attempt this delivery is (1 unless it came back from a delay queue)."""
        raw = self.headers.get(ATTEMPT_HEADER, 1)
        try:
            attempt = int(raw)
        except (TypeError, ValueError):
            return 1
        return max(attempt, 1)

    @property
    def replayed(self) -> int:
        """How many times it was moved back from the parking queue (0: never)."""
        try:
            return max(int(self.headers.get(REPLAYED_HEADER, 0)), 0)
        except (TypeError, ValueError):
            return 0


@dataclass(frozen=True)
class Outcome:
    """What becomes of a delivery: ``ack``, ``retry`` or ``park`` (with its ``reason``)."""

    action: Literal["ack", "retry", "park"]
    reason: str = ""
    error: BaseException | None = None


class DeliveryHandler:
    """Runs ``handler`` on one envelope at a time and decides the delivery's :class:`Outcome`
    (see the module docstring); ``retry_delays`` has one entry per retry."""

    def __init__(
        self,
        queue: str,
        handler: Handler,
        retry_delays: Sequence[float],
        on_exhausted: OnExhausted | None,
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.retry_delays = tuple(retry_delays)
        self.on_exhausted = on_exhausted
        #: The attempt number of the envelope being handled, None when idle.
        self.current_attempt: int | None = None

    def __call__(self, envelope: Envelope, attempt: int, replayed: int = 0) -> Outcome:
        """Handle ``envelope`` (its ``attempt``-th try) with the request ID,
        :data:`attempt_var` and :data:`replayed_var` set; run it in a context of its own
        (``contextvars``)."""
        request_id_var.set(envelope.request_id)
        attempt_var.set(attempt)
        replayed_var.set(replayed)
        self.current_attempt = attempt
        info = {
            "queue": self.queue,
            "message_type": envelope.type,
            "message_id": envelope.id,
            "attempt": attempt,
        }
        started = time.monotonic()
        try:
            self.handler(envelope)
        except Exception as exc:
            return self._failed(envelope, attempt, exc, info)
        finally:
            self.current_attempt = None
        log.info(
            "message handled",
            extra={**info, "duration_ms": round((time.monotonic() - started) * 1000, 1)},
        )
        return Outcome("ack")

    def failed_later(self, envelope: Envelope, attempt: int, error: BaseException) -> Outcome:
        """The outcome of ``envelope`` (its ``attempt``-th try) when the handler returned
        but the work it left for the end of its batch failed with ``error``: decided as if
        the handler had raised it (run it in that envelope's context)."""
        info = {
            "queue": self.queue,
            "message_type": envelope.type,
            "message_id": envelope.id,
            "attempt": attempt,
            "stage": "end of batch",
        }
        return self._failed(envelope, attempt, error, info)

    def _failed(
        self, envelope: Envelope, attempt: int, exc: BaseException, info: dict[str, Any]
    ) -> Outcome:
        if isinstance(exc, PermanentError):
            log.warning("handler failed for good; parking the message", exc_info=exc, extra=info)
            self._give_up(envelope, exc)
            return Outcome("park", "permanent", exc)
        if attempt <= len(self.retry_delays):
            log.warning(
                "handler failed; retrying later",
                exc_info=exc,
                extra={**info, "retry_in_seconds": self.retry_delays[attempt - 1]},
            )
            return Outcome("retry", error=exc)
        log.error("handler failed on the last attempt; parking", exc_info=exc, extra=info)
        self._give_up(envelope, exc)
        return Outcome("park", "exhausted", exc)

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


class Settler:
    """Carries out outcomes on one connection: ``channel`` is the one the deliveries came
    from (acks), ``publish_channel`` one in confirm mode for the retry and parked copies;
    ``clock`` stamps parked copies (``x-parked-at``)."""

    def __init__(
        self,
        queue: str,
        retry_delays: Sequence[float],
        channel: BlockingChannel,
        publish_channel: BlockingChannel,
        clock: Clock = utcnow,
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.retry_delays = tuple(retry_delays)
        self.channel = channel
        self.publish_channel = publish_channel

    def settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Make the outcome safe in the broker, then ack."""
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
                    PARKED_AT_HEADER: format_time(self.clock()),
                    ERROR_HEADER: _describe(outcome.error),
                    ATTEMPT_HEADER: delivery.attempt,
                    ORIGINAL_ROUTING_KEY_HEADER: delivery.original_routing_key,
                },
            )
        self.channel.basic_ack(delivery.tag)

    def _republish(self, delivery: Delivery, queue: str, headers: dict[str, Any]) -> None:
        """Publish a copy of ``delivery`` straight to ``queue`` and wait for the confirm."""
        original = delivery.properties
        merged = delivery.headers
        merged.pop("x-death", None)  # the broker's own history of dead-lettering
        merged.update(headers)
        properties = persistent_copy(original, merged)
        self.publish_channel.basic_publish(
            exchange="",
            routing_key=queue,
            body=delivery.body,
            properties=properties,
            mandatory=True,
        )


def _describe(error: BaseException | None) -> str:
    return "" if error is None else f"{type(error).__name__}: {error}"[:500]


def persistent_copy(
    original: pika.spec.BasicProperties, headers: dict[str, Any]
) -> pika.BasicProperties:
    """``original``'s properties with ``headers`` instead of its own, persistent: what a
    message republished by hand (a retry, a parked copy, a replay) carries."""
    return pika.BasicProperties(
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        headers=headers,
        delivery_mode=pika.DeliveryMode.Persistent,
        priority=original.priority,
        correlation_id=original.correlation_id,
        reply_to=original.reply_to,
        message_id=original.message_id,
        timestamp=original.timestamp,
        type=original.type,
        app_id=original.app_id,
    )
