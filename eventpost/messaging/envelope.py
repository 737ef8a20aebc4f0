"""The envelope every EventPost message travels in, and its AMQP form.

On the wire the body is the envelope as UTF-8 JSON (``{"id", "type", "occurred_at",
"request_id", "payload"}``) and the AMQP properties repeat what brokers and tools look at:
``message_id`` = id, ``type`` = type, ``timestamp`` (whole seconds of ``occurred_at``),
``content_type`` ``application/json``, ``delivery_mode`` 2 (persistent) and the header
``x-request-id`` (left out when the envelope has no request ID).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pika

from eventpost.ids import new_id
from eventpost.timeutil import Clock, format_time, parse_time, utcnow

CONTENT_TYPE = "application/json"
#: AMQP header carrying the request ID from the HTTP request that caused the message.
REQUEST_ID_HEADER = "x-request-id"

_FIELDS = ("id", "type", "occurred_at", "request_id", "payload")


class MalformedMessage(ValueError):
    """A body or dict that is not a valid envelope."""


@dataclass(frozen=True)
class Envelope:
    """One message: an event (past tense, ``user.created``) or a command (``email.send``).

    ``id`` is unique per logical message and stays the same on every redelivery and retry,
    so consumers deduplicate by it. ``occurred_at`` is a :func:`format_time` UTC string.
    ``payload`` must be JSON-serialisable (see :mod:`eventpost.contracts` for each type's).
    """

    id: str
    type: str
    occurred_at: str
    request_id: str | None
    payload: dict[str, Any]

    @classmethod
    def new(
        cls,
        type: str,
        payload: Mapping[str, Any],
        request_id: str | None = None,
        *,
        clock: Clock = utcnow,
        id_factory: Callable[[], str] = new_id,
    ) -> Envelope:
        """A new envelope with a fresh id and the current time."""
        return cls(
            id=id_factory(),
            type=type,
            occurred_at=format_time(clock()),
            request_id=request_id,
            payload=dict(payload),
        )

    def to_dict(self) -> dict[str, Any]:
        """The envelope as a JSON-compatible dict (the outbox stores this)."""
        return {
            "id": self.id,
            "type": self.type,
            "occurred_at": self.occurred_at,
            "request_id": self.request_id,
            "payload": self.payload,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        """The envelope in ``data``; keys other than the envelope's own are ignored (a
        store's outbox record may carry bookkeeping fields). Raises :class:`MalformedMessage`.
        """
        if not isinstance(data, Mapping):
            raise MalformedMessage("an envelope must be a JSON object")
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise MalformedMessage(f"envelope lacks {', '.join(missing)}")
        for name in ("id", "type", "occurred_at"):
            value = data[name]
            if not isinstance(value, str) or not value.strip():
                raise MalformedMessage(f"envelope {name} must be a non-empty string")
        request_id = data["request_id"]
        if request_id is not None and not isinstance(request_id, str):
            raise MalformedMessage("envelope request_id must be a string or null")
        payload = data["payload"]
        if not isinstance(payload, dict):
            raise MalformedMessage("envelope payload must be a JSON object")
        try:
            occurred_at = format_time(parse_time(data["occurred_at"]))
        except ValueError as exc:
            raise MalformedMessage(
                f"envelope occurred_at is not a time with an offset: {exc}"
            ) from None
        return cls(
            id=data["id"],
            type=data["type"],
            occurred_at=occurred_at,
            request_id=request_id,
            payload=payload,
        )

    def to_bytes(self) -> bytes:
        """The AMQP body: compact UTF-8 JSON."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, body: bytes) -> Envelope:
        """The envelope in an AMQP body. Raises :class:`MalformedMessage` on anything else
        (not UTF-8, not JSON, not an object, a missing or mistyped field)."""
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, AttributeError) as exc:
            raise MalformedMessage(f"body is not UTF-8 JSON: {exc}") from None
        return cls.from_dict(data)

    def amqp_properties(self, headers: Mapping[str, Any] | None = None) -> pika.BasicProperties:
        """The AMQP properties this envelope is published with, plus extra ``headers``."""
        all_headers: dict[str, Any] = {}
        if self.request_id is not None:
            all_headers[REQUEST_ID_HEADER] = self.request_id
        if headers:
            all_headers.update(headers)
        return pika.BasicProperties(
            message_id=self.id,
            type=self.type,
            timestamp=int(parse_time(self.occurred_at).timestamp()),
            content_type=CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            headers=all_headers,
        )
