"""Messaging over RabbitMQ: envelopes, publishing with confirms, consuming with retries and a
parking queue, the outbox relay, and a worker that runs them. See each module's docstring."""

from eventpost.messaging.consumer import Consumer, PermanentError, attempt_var
from eventpost.messaging.envelope import Envelope, MalformedMessage
from eventpost.messaging.publisher import Publisher, PublishError, Unroutable
from eventpost.messaging.relay import OutboxRelay
from eventpost.messaging.topology import EXCHANGE, declare_consumer_topology
from eventpost.messaging.worker import Worker, run_consumers

__all__ = [
    "EXCHANGE",
    "Consumer",
    "Envelope",
    "MalformedMessage",
    "OutboxRelay",
    "PermanentError",
    "PublishError",
    "Publisher",
    "Unroutable",
    "Worker",
    "attempt_var",
    "declare_consumer_topology",
    "run_consumers",
]
