"""Messaging over RabbitMQ: envelopes, publishing with confirms, consuming with retries and a
parking queue, the outbox relay, and a worker that runs them. See each module's docstring."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventpost.messaging.consumer import Consumer, PermanentError, attempt_var, replayed_var
from eventpost.messaging.envelope import Envelope, MalformedMessage
from eventpost.messaging.publisher import Publisher, PublishError, Unroutable
from eventpost.messaging.topology import EXCHANGE, declare_consumer_topology

if TYPE_CHECKING:
    from eventpost.messaging.relay import OutboxRelay
    from eventpost.messaging.worker import Worker

# Imported on first use, so that `python -m eventpost.messaging.relay` does not find its own
# module already imported by this package.
_LAZY = {
    "OutboxRelay": "eventpost.messaging.relay",
    "Worker": "eventpost.messaging.worker",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "replayed_var",
]
