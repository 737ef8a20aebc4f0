"""What sits in the parking queues, and moving it back: ``invoke parked [--replay]``.

A consumer parks a message that will never succeed as it is (see
:mod:`eventpost.messaging.delivery`): a copy goes to ``<queue>.parked`` with headers
``x-park-reason`` (``malformed``, ``permanent``, ``exhausted``), ``x-error``, ``x-attempt``,
``x-parked-at`` and ``x-original-routing-key``. Once the cause is fixed, an operator replays
it: :func:`replay` publishes a copy straight to ``<queue>`` (the default exchange, so only
that consumer gets it again, not every queue bound to its routing key) with confirms, and
only then acks the parked one. The copy starts again at attempt 1, without the park headers,
with ``x-replayed`` counting the replays (a handler reads it as
:data:`~eventpost.messaging.replayed_var`). A crash in between leaves the message in both
queues: consumers deduplicate by envelope id, so at worst it is handled twice.

Reading a queue without taking from it: every message is fetched unacked on one channel,
and closing the channel hands back all that were not replayed, in their order.

``python -m eventpost.messaging.parking [--replay] [--id ID ...] [--queue Q ...] [--json]``
(``AMQP_URL`` from the environment; the queues default to every consumer queue of
:data:`eventpost.contracts.SUBSCRIPTIONS`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from eventpost.messaging.delivery import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    PARK_REASON_HEADER,
    PARKED_AT_HEADER,
    REPLAYED_HEADER,
    persistent_copy,
)
from eventpost.messaging.envelope import REQUEST_ID_HEADER
from eventpost.messaging.topology import (
    close_quietly,
    connection_parameters,
    default_connection_name,
    parked_queue_name,
)
from eventpost.timeutil import Clock, parse_time, utcnow

log = logging.getLogger("eventpost.messaging.parking")

#: Headers a replayed copy leaves behind (the broker's own ``x-death`` included).
_PARK_ONLY = (PARK_REASON_HEADER, ERROR_HEADER, PARKED_AT_HEADER, "x-death")


@dataclass(frozen=True)
class ParkedMessage:
    """One parked message: ``queue`` is the consumer queue it belongs to, ``id`` its
    envelope id (what ``--id`` selects), ``age_seconds`` how long it has been parked (None
    when unknown)."""

    queue: str
    id: str
    type: str
    reason: str
    error: str
    parked_at: str | None
    age_seconds: float | None
    request_id: str | None
    attempt: int
    replayed: int


def _body_fields(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def describe(
    queue: str, properties: pika.BasicProperties, body: bytes, *, clock: Clock = utcnow
) -> ParkedMessage:
    """What a parked message of ``queue`` is (a malformed body too: its fields are unknown)."""
    headers = dict(properties.headers or {})
    fields = _body_fields(body)
    parked_at = headers.get(PARKED_AT_HEADER)
    age = None
    if isinstance(parked_at, bytes):
        parked_at = parked_at.decode("utf-8", "replace")
    if isinstance(parked_at, str):
        try:
            age = round((clock() - parse_time(parked_at)).total_seconds(), 1)
        except ValueError:
            age = None
    request_id = headers.get(REQUEST_ID_HEADER) or fields.get("request_id")
    return ParkedMessage(
        queue=queue,
        id=str(fields.get("id") or properties.message_id or ""),
        type=str(fields.get("type") or properties.type or ""),
        reason=_text(headers.get(PARK_REASON_HEADER)),
        error=_text(headers.get(ERROR_HEADER)),
        parked_at=parked_at if isinstance(parked_at, str) else None,
        age_seconds=age,
        request_id=_text(request_id) or None,
        attempt=_int(headers.get(ATTEMPT_HEADER), 1),
        replayed=_int(headers.get(REPLAYED_HEADER), 0),
    )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _int(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def replay_properties(properties: pika.BasicProperties) -> pika.BasicProperties:
    """The properties of the copy that goes back: park headers dropped, attempt 1, one more
    replay counted."""
    headers = dict(properties.headers or {})
    for name in _PARK_ONLY:
        headers.pop(name, None)
    headers[ATTEMPT_HEADER] = 1
    headers[REPLAYED_HEADER] = _int(headers.get(REPLAYED_HEADER), 0) + 1
    return persistent_copy(properties, headers)


class ParkingQueues:
    """The parking queues of ``queues`` (consumer queue names) on one open connection."""

    def __init__(
        self, connection: pika.BlockingConnection, queues: Iterable[str], *, clock: Clock = utcnow
    ) -> None:
        self.connection = connection
        self.queues = list(dict.fromkeys(queues))
        self.clock = clock

    def list(self) -> list[ParkedMessage]:
        """Every parked message, queue by queue, oldest first; nothing is taken."""
        found: list[ParkedMessage] = []
        for queue in self.queues:
            with self._fetched(queue) as (_channel, messages):
                found.extend(
                    describe(queue, props, body, clock=self.clock) for _tag, props, body in messages
                )
        return found

    def replay(self, ids: Sequence[str] | None = None) -> list[ParkedMessage]:
        """Move parked messages back to their queue (only those whose envelope id is in
        ``ids``, when given); returns what was moved."""
        wanted = set(ids) if ids else None
        moved: list[ParkedMessage] = []
        publish = self.connection.channel()
        publish.confirm_delivery()
        try:
            for queue in self.queues:
                with self._fetched(queue) as (channel, messages):
                    for tag, props, body in messages:
                        parked = describe(queue, props, body, clock=self.clock)
                        if wanted is not None and parked.id not in wanted:
                            continue
                        # Mandatory: a consumer queue that is gone raises instead of
                        # silently dropping the copy; the parked message then stays.
                        publish.basic_publish(
                            "", queue, body, replay_properties(props), mandatory=True
                        )
                        channel.basic_ack(tag)
                        log.info(
                            "parked message replayed",
                            extra={"queue": queue, "message_id": parked.id, "type": parked.type},
                        )
                        moved.append(parked)
        finally:
            if publish.is_open:
                publish.close()
        return moved

    @contextmanager
    def _fetched(
        self, queue: str
    ) -> Iterator[tuple[BlockingChannel, list[tuple[int, pika.BasicProperties, bytes]]]]:
        """Every message now in ``queue``'s parking queue, fetched unacked on a channel of
        its own; closing it afterwards hands back whatever was not acked."""
        channel = self.connection.channel()
        parked = parked_queue_name(queue)
        messages: list[tuple[int, pika.BasicProperties, bytes]] = []
        try:
            try:
                count = channel.queue_declare(parked, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                count = 0  # no such queue: nothing parked there
            while channel.is_open and len(messages) < count:
                method, props, body = channel.basic_get(parked, auto_ack=False)
                if method is None:
                    break
                messages.append((method.delivery_tag, props, body))
            yield channel, messages
        finally:
            if channel.is_open:
                channel.close()


def format_table(messages: Sequence[ParkedMessage]) -> str:
    """A human-readable listing (one line per message, its error below it)."""
    if not messages:
        return "nothing parked"
    lines = [f"{'QUEUE':<32} {'ID':<34} {'TYPE':<18} {'REASON':<10} {'AGE':>8}  REQUEST ID"]
    for m in messages:
        age = "?" if m.age_seconds is None else _age(m.age_seconds)
        lines.append(
            f"{m.queue:<32} {m.id:<34} {m.type:<18} {m.reason:<10} {age:>8}  {m.request_id or '-'}"
        )
        if m.error:
            lines.append(f"    {m.error}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eventpost.messaging.parking``: list (or ``--replay``) parked messages."""
    from eventpost.contracts import SUBSCRIPTIONS
    from eventpost.settings import Settings

    parser = argparse.ArgumentParser(description="List or replay parked messages.")
    parser.add_argument("--replay", action="store_true", help="move them back to their queue")
    parser.add_argument("--id", action="append", default=[], help="only this envelope id")
    parser.add_argument("--queue", action="append", default=[], help="consumer queue(s)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = parser.parse_args(argv)
    settings = Settings.from_env("parking")
    queues = args.queue or list(SUBSCRIPTIONS)
    try:
        connection = pika.BlockingConnection(
            connection_parameters(settings.amqp_url, default_connection_name("parking"))
        )
    except (pika.exceptions.AMQPError, OSError) as exc:
        sys.stderr.write(f"cannot reach RabbitMQ: {exc!r}\n")
        return 2
    try:
        parking = ParkingQueues(connection, queues)
        if args.replay:
            messages = parking.replay(args.id)
        else:
            messages = [m for m in parking.list() if not args.id or m.id in args.id]
    finally:
        close_quietly(connection)
    if args.json:
        for m in messages:
            sys.stdout.write(json.dumps(asdict(m)) + "\n")
    else:
        sys.stdout.write(format_table(messages) + "\n")
        if args.replay:
            sys.stdout.write(f"{len(messages)} replayed\n")
    if args.id and len(messages) < len(set(args.id)):
        sys.stderr.write("some ids were not found in the parking queues\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
