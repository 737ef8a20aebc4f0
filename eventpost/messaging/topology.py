"""RabbitMQ topology: one durable topic exchange, and per consumer a queue, its delay queues
and its parking queue. Everything here is declared idempotently, so every process declares
what it uses when it connects and nothing has to be set up by hand.

Per consumer queue ``q`` (bound to :data:`EXCHANGE` with the consumer's binding keys):

- ``q.retry.<ms>ms`` for the delay of each retry step: no consumer; ``x-message-ttl`` is that
  delay, and an expired message is dead-lettered through the default exchange straight back to
  ``q`` (only ``q``, not to every queue bound to the original routing key). Each delay queue
  holds messages of one TTL only, so they expire in order.
- ``q.parked``: messages that will never succeed (malformed, permanently failing, or out of
  retries), kept for an operator to inspect and move back by hand.

Queue types (``AMQP_QUEUE_TYPE``, see :data:`QUEUE_TYPES`):

- ``classic`` (the default): *classic durable* queues holding persistent messages. With
  publisher confirms they survive a broker restart, which is what a single node can offer.
- ``quorum``: every queue above (consumer queue, delay queues, parking queue) is a quorum
  queue, replicated over the cluster, so a node may die without losing a message. Delay
  queues dead-letter ``at-least-once`` (with ``x-overflow: reject-publish``, which that
  strategy requires): RabbitMQ's default for quorum queues is at-most-once, which could drop
  a message on its way back from a delay queue.

A queue keeps the type it was first declared with: switching ``AMQP_QUEUE_TYPE`` on a broker
that has the queues already fails with ``PRECONDITION_FAILED``; drain and delete them first
(or use a fresh vhost).

Several AMQP URLs (the nodes of a cluster) may be given comma separated: every connection
tries them in order (:func:`connection_parameters`).

The arguments of a declared queue are fixed by the broker, so each delay queue is named after
its delay: changing ``RETRY_DELAYS`` declares new delay queues instead of failing with
``PRECONDITION_FAILED`` (which would wedge the consumer); messages still waiting in a queue of
an old delay go back to ``q`` when they expire, and the empty old queue can be deleted by hand.
Bindings dropped from the code are not unbound automatically.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

log = logging.getLogger(__name__)

#: The topic exchange every EventPost message is published on; routing key = envelope type.
EXCHANGE = "eventpost"
#: Seconds a connection may stay blocked by the broker (memory or disk alarm) before it is
#: given up, so a publish never hangs for ever.
BLOCKED_CONNECTION_TIMEOUT = 60.0


def retry_queue_name(queue: str, delay: float) -> str:
    """The delay queue of ``queue`` that holds messages for ``delay`` seconds."""
    return f"{queue}.retry.{delay_ms(delay)}ms"


def delay_ms(delay: float) -> int:
    """A delay in whole milliseconds (at least 1), as the broker's TTL takes it."""
    return max(1, round(delay * 1000))


def parked_queue_name(queue: str) -> str:
    """The parking queue of ``queue``."""
    return f"{queue}.parked"


#: The queue types ``AMQP_QUEUE_TYPE`` may name.
QUEUE_TYPES = ("classic", "quorum")


def queue_arguments(queue_type: str) -> dict[str, str]:
    """The declare arguments that make a queue of ``queue_type``."""
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue type must be one of {', '.join(QUEUE_TYPES)}, got {queue_type!r}")
    # Classic queues are declared without the argument, as they always were: RabbitMQ 3.10
    # may call an explicit "classic" inequivalent to a queue declared without it.
    return {} if queue_type == "classic" else {"x-queue-type": queue_type}


def delay_queue_arguments(queue: str, delay: float, queue_type: str) -> dict[str, object]:
    """The arguments of ``queue``'s delay queue for ``delay`` seconds (see module docstring)."""
    arguments: dict[str, object] = {
        **queue_arguments(queue_type),
        "x-message-ttl": delay_ms(delay),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
    }
    if queue_type == "quorum":
        arguments["x-dead-letter-strategy"] = "at-least-once"
        arguments["x-overflow"] = "reject-publish"
    return arguments


def declare_exchange(channel: BlockingChannel, exchange: str = EXCHANGE) -> None:
    """Declare the durable topic exchange (idempotent)."""
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)


def declare_bound_queue(
    channel: BlockingChannel,
    queue: str,
    bindings: Sequence[str],
    exchange: str = EXCHANGE,
    *,
    queue_type: str = "classic",
) -> None:
    """Declare (idempotently) the durable ``queue`` of ``queue_type`` bound to ``exchange``
    with each key of ``bindings``: what consumers and publishers that pre-declare
    subscriptions share."""
    channel.queue_declare(queue=queue, durable=True, arguments=queue_arguments(queue_type))
    for key in bindings:
        channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)


def declare_consumer_topology(
    channel: BlockingChannel,
    queue: str,
    bindings: Sequence[str],
    retry_delays: Sequence[float],
    *,
    exchange: str = EXCHANGE,
    queue_type: str = "classic",
) -> None:
    """Declare (idempotently) the exchange, ``queue`` bound with every key of ``bindings``,
    one delay queue per entry of ``retry_delays`` (seconds) and the parking queue, all of
    ``queue_type``."""
    declare_exchange(channel, exchange)
    declare_bound_queue(channel, queue, bindings, exchange, queue_type=queue_type)
    for delay in retry_delays:
        channel.queue_declare(
            queue=retry_queue_name(queue, delay),
            durable=True,
            arguments=delay_queue_arguments(queue, delay, queue_type),
        )
    channel.queue_declare(
        queue=parked_queue_name(queue), durable=True, arguments=queue_arguments(queue_type)
    )


def default_connection_name(role: str) -> str:
    """A connection name that tells operators who is connected: role, host and process."""
    return f"eventpost-{role}@{socket.gethostname()}:{os.getpid()}"


def split_urls(amqp_url: str) -> list[str]:
    """The URLs of an ``AMQP_URL`` that may list several, comma separated."""
    urls = [part.strip() for part in amqp_url.split(",") if part.strip()]
    if not urls:
        raise ValueError("AMQP_URL names no broker")
    return urls


def connection_parameters(
    amqp_url: str, connection_name: str, *, timeout: float = 5.0
) -> list[pika.URLParameters]:
    """Parameters for each URL of ``amqp_url`` (one, or several comma separated), in order:
    ``pika.BlockingConnection`` given the list tries them one after the other, so a client
    reaches whichever node of a cluster is up. Each has a client-provided connection name
    (shown by ``rabbitmqctl list_connections client_properties`` and the management UI), one
    connection attempt, ``timeout`` seconds to connect, and a bound on how long the broker may
    block the connection. Options given in a URL's query (``?socket_timeout=...``) win."""
    return [_parameters(url, connection_name, timeout) for url in split_urls(amqp_url)]


def _parameters(url: str, connection_name: str, timeout: float) -> pika.URLParameters:
    params = pika.URLParameters(url)
    given = parse_qs(urlsplit(url).query)
    params.client_properties = {"connection_name": connection_name}
    if "socket_timeout" not in given:
        params.socket_timeout = timeout
    if "stack_timeout" not in given:
        params.stack_timeout = timeout
    if "blocked_connection_timeout" not in given:
        params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT
    return params


def close_quietly(connection: pika.BlockingConnection) -> None:
    """Close a connection that may already be closed or broken."""
    if not connection.is_open:
        return
    try:
        connection.close()
    except (pika.exceptions.AMQPError, OSError):
        log.debug("error while closing a connection", exc_info=True)
