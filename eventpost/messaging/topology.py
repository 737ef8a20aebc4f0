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

Queues are *classic durable* queues holding persistent messages: with publisher confirms they
survive a broker restart, which is what a single-node broker can offer. Quorum queues only
add replication, which needs a cluster, and on RabbitMQ 3.10 dead-lettering out of a quorum
queue is at-most-once unless extra policies are set, which would let a delay queue lose the
messages it holds.

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


def declare_exchange(channel: BlockingChannel, exchange: str = EXCHANGE) -> None:
    """Declare the durable topic exchange (idempotent)."""
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)


def declare_bound_queue(
    channel: BlockingChannel, queue: str, bindings: Sequence[str], exchange: str = EXCHANGE
) -> None:
    """Declare (idempotently) the durable ``queue`` bound to ``exchange`` with each key of
    ``bindings``: what consumers and publishers that pre-declare subscriptions share."""
    channel.queue_declare(queue=queue, durable=True)
    for key in bindings:
        channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)


def declare_consumer_topology(
    channel: BlockingChannel,
    queue: str,
    bindings: Sequence[str],
    retry_delays: Sequence[float],
    *,
    exchange: str = EXCHANGE,
) -> None:
    """Declare (idempotently) the exchange, ``queue`` bound with every key of ``bindings``,
    one delay queue per entry of ``retry_delays`` (seconds) and the parking queue."""
    declare_exchange(channel, exchange)
    declare_bound_queue(channel, queue, bindings, exchange)
    for delay in retry_delays:
        channel.queue_declare(
            queue=retry_queue_name(queue, delay),
            durable=True,
            arguments={
                "x-message-ttl": delay_ms(delay),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue,
            },
        )
    channel.queue_declare(queue=parked_queue_name(queue), durable=True)


def default_connection_name(role: str) -> str:
    """A connection name that tells operators who is connected: role, host and process."""
    return f"eventpost-{role}@{socket.gethostname()}:{os.getpid()}"


def connection_parameters(
    amqp_url: str, connection_name: str, *, timeout: float = 5.0
) -> pika.URLParameters:
    """Parameters for ``amqp_url`` with a client-provided connection name (shown by
    ``rabbitmqctl list_connections client_properties`` and the management UI), one connection
    attempt, ``timeout`` seconds to connect, and a bound on how long the broker may block the
    connection. Options given in the URL's query (``?socket_timeout=...``) win."""
    params = pika.URLParameters(amqp_url)
    given = parse_qs(urlsplit(amqp_url).query)
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
