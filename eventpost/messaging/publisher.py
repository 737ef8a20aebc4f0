"""Publishing envelopes with publisher confirms."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import TracebackType

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from eventpost.messaging._pipe import NACKED, RETURNED, ConfirmPipe, Outgoing
from eventpost.messaging.envelope import Envelope
from eventpost.messaging.topology import (
    EXCHANGE,
    close_quietly,
    connection_parameters,
    declare_bound_queue,
    declare_exchange,
    default_connection_name,
    queue_arguments,
)

log = logging.getLogger(__name__)


class PublishError(Exception):
    """The broker did not take the message: it nacked it, or it could not be reached even
    after one reconnect. The message may or may not have been delivered; publishing it again
    is safe because consumers deduplicate by envelope id."""


class Unroutable(PublishError):
    """The broker took the message but no queue is bound to its routing key (it was
    published ``mandatory`` and returned)."""


# Connection or channel trouble: worth one reconnect. UnroutableError and NackError are
# AMQPChannelErrors too, so they are caught before this.
_CONNECTION_TROUBLE = (pika.exceptions.AMQPError, OSError)
# What ConfirmPipe reports for a message left without its confirm.
_CONNECTION_LOST = (pika.exceptions.AMQPConnectionError, OSError)


class Publisher:
    """Publishes envelopes on the topic exchange with confirms, persistent and mandatory.

    The connection is opened on the first :meth:`publish` (never at construction) and the
    exchange declared then. :meth:`publish` returns only once the broker confirmed the
    message; :meth:`publish_many` sends a batch with their confirms in flight together (one
    round trip for the lot instead of one each, on a connection of its own). A lost
    connection, or a nack, makes it reopen the connection once and publish again; a second
    failure raises :class:`PublishError`. ``amqp_url`` may list several
    nodes, comma separated: each connect tries them in order, so a publisher moves to a live
    node by itself.

    Not thread-safe: pika's ``BlockingConnection`` belongs to one thread, so use one
    Publisher per thread. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        exchange: str = EXCHANGE,
        connect_timeout: float = 5.0,
        connection_name: str | None = None,
        subscriptions: Mapping[str, Sequence[str]] | None = None,
        queue_type: str = "classic",
        confirm_timeout: float = 15.0,
    ) -> None:
        self.amqp_url = amqp_url
        self.exchange = exchange
        # Queues (name -> routing keys) declared and bound on every connect, so what this
        # publisher sends has somewhere to wait even before its consumer first started.
        self.subscriptions = dict(subscriptions or {})
        queue_arguments(queue_type)  # fail early on an unknown type
        # The type those queues are declared with: the consumers' (Settings.amqp_queue_type).
        self.queue_type = queue_type
        self.connect_timeout = connect_timeout
        # How long publish_many waits for a batch's confirms before it counts the rest lost.
        self.confirm_timeout = confirm_timeout
        self.connection_name = connection_name or default_connection_name("publisher")
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pipe: ConfirmPipe | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection is open right now."""
        return self._connection is not None and self._connection.is_open

    def publish(self, envelope: Envelope, routing_key: str | None = None) -> None:
        """Publish ``envelope`` with routing key ``routing_key`` (default: its type) and wait
        for the broker's confirm. Raises :class:`Unroutable` when no queue is bound to the
        key and :class:`PublishError` when the broker nacks or stays unreachable."""
        key = routing_key or envelope.type
        body = envelope.to_bytes()
        properties = envelope.amqp_properties()
        for attempt in (1, 2):
            try:
                channel = self._ensure_channel()
                channel.basic_publish(
                    exchange=self.exchange,
                    routing_key=key,
                    body=body,
                    properties=properties,
                    mandatory=True,
                )
                return
            except pika.exceptions.UnroutableError as exc:
                raise Unroutable(
                    f"no queue is bound to {key!r} on exchange {self.exchange!r}"
                ) from exc
            except pika.exceptions.NackError as exc:
                # A channel can go on nacking after a cluster node died (RabbitMQ 3.10: one
                # opened while the quorum queues were electing new leaders); a fresh
                # connection gets one that works. A second nack is the broker's answer.
                self._discard()
                if attempt == 2:
                    raise PublishError(f"the broker nacked message {envelope.id}") from exc
                log.warning(
                    "publish nacked, reconnecting once",
                    extra={"message_id": envelope.id},
                )
            except _CONNECTION_TROUBLE as exc:
                self._discard()
                if attempt == 2:
                    raise PublishError(f"could not publish message {envelope.id}: {exc!r}") from exc
                log.warning(
                    "publish failed, reconnecting once",
                    extra={"error": repr(exc), "message_id": envelope.id},
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def publish_many(
        self, envelopes: Sequence[Envelope], *, timeout: float | None = None
    ) -> list[PublishError | None]:
        """Publish ``envelopes`` in order, each with the routing key of its type, writing
        them all before waiting for their confirms; returns, for each, None once confirmed
        or the error :meth:`publish` would have raised for it (:class:`Unroutable`, or
        :class:`PublishError` whose ``__cause__`` tells a nack or framing error from the
        broker being unreachable). As with :meth:`publish`, what a lost connection or a
        nack left unconfirmed is published once more on a new connection. ``timeout``: how
        long to wait for the confirms of each attempt (default ``confirm_timeout``)."""
        wait = self.confirm_timeout if timeout is None else timeout
        messages = [
            Outgoing(env.type, env.to_bytes(), env.amqp_properties(), env.id) for env in envelopes
        ]
        results: list[PublishError | None] = [None] * len(messages)
        todo = list(range(len(messages)))
        for attempt in (1, 2):
            try:
                pipe = self._ensure_pipe()
            except _CONNECTION_TROUBLE as exc:
                self._close_pipe()
                if attempt == 2:
                    for index in todo:
                        results[index] = _failure(envelopes[index], exc)
                    break
                log.warning(
                    "publisher could not connect, trying once more", extra={"error": repr(exc)}
                )
                continue
            outcomes = pipe.publish([messages[index] for index in todo], timeout=wait)
            again: list[int] = []
            for index, outcome in zip(todo, outcomes, strict=True):
                envelope = envelopes[index]
                if outcome is None:
                    results[index] = None
                elif outcome == RETURNED:
                    results[index] = Unroutable(
                        f"no queue is bound to {envelope.type!r} on exchange {self.exchange!r}"
                    )
                elif attempt == 1 and (outcome == NACKED or isinstance(outcome, _CONNECTION_LOST)):
                    again.append(index)
                elif outcome == NACKED:
                    results[index] = _failure(envelope, pika.exceptions.NackError([]))
                else:
                    results[index] = _failure(envelope, outcome)
            if not again:
                break
            # A nacking channel or a lost connection: a fresh connection, as publish() does.
            self._close_pipe()
            log.warning(
                "publishes nacked or unconfirmed, reconnecting once",
                extra={"messages": len(again)},
            )
            todo = again
        return results

    def _ensure_pipe(self) -> ConfirmPipe:
        if self._pipe is not None and self._pipe.is_open:
            return self._pipe
        self._close_pipe()
        # Exchange and subscriptions are declared on a blocking channel (the helpers'), which
        # is closed again: publish_many needs only the pipe's connection.
        self._ensure_channel()
        self._discard()
        parameters = connection_parameters(
            self.amqp_url, self.connection_name, timeout=self.connect_timeout
        )
        pipe = ConfirmPipe(parameters, self.exchange)
        try:
            pipe.open(self.connect_timeout)
        except BaseException:
            pipe.close()
            raise
        self._pipe = pipe
        return pipe

    def _close_pipe(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()

    def keepalive(self) -> None:
        """Answer heartbeats on an idle open connection (a relay calls this while polling),
        so the broker does not drop it. Never connects; a dead connection is dropped and the
        next publish reconnects."""
        if self._pipe is not None:
            try:
                self._pipe.keepalive()
            except _CONNECTION_TROUBLE as exc:
                log.info("publisher connection lost while idle", extra={"error": repr(exc)})
                self._close_pipe()
            if self._pipe is not None and not self._pipe.is_open:
                self._close_pipe()
        if self._connection is None:
            return
        try:
            self._connection.process_data_events(time_limit=0)
        except _CONNECTION_TROUBLE as exc:
            log.info("publisher connection lost while idle", extra={"error": repr(exc)})
            self._discard()

    def close(self) -> None:
        """Close the connections, if open. The publisher can be used again after."""
        self._close_pipe()
        self._discard()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ensure_channel(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open and self.connected:
            return self._channel
        self._discard()
        params = connection_parameters(
            self.amqp_url, self.connection_name, timeout=self.connect_timeout
        )
        connection = pika.BlockingConnection(params)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            declare_exchange(channel, self.exchange)
            for queue, keys in self.subscriptions.items():
                declare_bound_queue(channel, queue, keys, self.exchange, queue_type=self.queue_type)
        except BaseException:
            close_quietly(connection)
            raise
        self._connection, self._channel = connection, channel
        return channel

    def _discard(self) -> None:
        """Forget a broken blocking connection (closing it quietly if still half open)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            close_quietly(connection)


def _failure(envelope: Envelope, cause: BaseException) -> PublishError:
    """The PublishError of ``envelope`` for ``cause`` (kept as its ``__cause__``)."""
    if isinstance(cause, pika.exceptions.NackError):
        error = PublishError(f"the broker nacked message {envelope.id}")
    else:
        error = PublishError(f"could not publish message {envelope.id}: {cause!r}")
    error.__cause__ = cause
    return error
