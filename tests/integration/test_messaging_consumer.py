"""Consumer against the real RabbitMQ: acks, delayed retries, parking, stop, reconnect, and a
consumer process killed in the middle of a message."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import threading
import time
from collections.abc import Callable

import pytest

from eventpost.logs import request_id_var
from eventpost.messaging import Consumer, Envelope, PermanentError, Publisher, attempt_var
from eventpost.messaging.topology import retry_queue_name
from tests.integration._amqp import (
    Broker,
    broker,
    close_connections_named,
    finish,
    helper_process,
    running,
    unique,
    wait_until,
)

pytestmark = pytest.mark.rabbitmq
__all__ = ["broker"]  # the fixture, imported for pytest


def consumer_for(
    b: Broker,
    handler: Callable[[Envelope], None],
    key: str,
    *,
    retry_delays: tuple[float, ...] = (0.2,),
    **kw,
) -> Consumer:
    return Consumer(
        b.url,
        b.queue_name("consumer"),
        [key],
        handler,
        retry_delays=retry_delays,
        exchange=b.exchange,
        connection_name=kw.pop("connection_name", unique("test-consumer")),
        **kw,
    )


def publish(b: Broker, *envelopes: Envelope) -> None:
    with Publisher(b.url, exchange=b.exchange, connection_name=unique("test-pub")) as publisher:
        for env in envelopes:
            publisher.publish(env)


def test_handler_sees_request_id_and_attempt_and_the_message_is_acked(broker: Broker):
    key = unique("k")
    seen: list[tuple[str, str | None, int | None, int | None]] = []
    consumer: Consumer

    def handler(env: Envelope) -> None:
        seen.append((env.id, request_id_var.get(), attempt_var.get(), consumer.current_attempt))

    consumer = consumer_for(broker, handler, key)
    env = Envelope.new(key, {"x": 1}, request_id="req-7")
    with running(consumer):
        wait_until(lambda: broker.consumers(consumer.queue) == 1, what="consumer")
        publish(broker, env)
        wait_until(lambda: seen, what="handled")
    assert seen == [(env.id, "req-7", 1, 1)]
    assert request_id_var.get() is None  # the handler's context did not leak
    assert broker.depth(consumer.queue) == 0  # acked: not back in the queue after disconnect
    assert broker.depth(f"{consumer.queue}.parked") == 0


def test_failing_message_is_retried_with_growing_delays_then_parked(broker: Broker):
    key = unique("k")
    delays = (0.2, 0.5, 1.0)
    tries: list[tuple[float, int | None]] = []
    exhausted: list[tuple[Envelope, BaseException]] = []

    def handler(env: Envelope) -> None:
        tries.append((time.monotonic(), attempt_var.get()))
        raise RuntimeError(f"try {len(tries)} failed")

    consumer = consumer_for(
        broker,
        handler,
        key,
        retry_delays=delays,
        on_exhausted=lambda env, exc: exhausted.append((env, exc)),
    )
    env = Envelope.new(key, {"x": 1}, request_id="req-retry")
    parked = f"{consumer.queue}.parked"
    with running(consumer):
        wait_until(lambda: broker.consumers(consumer.queue) == 1, what="consumer")
        publish(broker, env)
        wait_until(lambda: broker.depth(parked) == 1, what="the parked message")

    assert [attempt for _t, attempt in tries] == [1, 2, 3, 4]
    gaps = [later - earlier for (earlier, _a), (later, _b) in itertools.pairwise(tries)]
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay
    assert gaps[0] < gaps[1] < gaps[2]

    assert len(exhausted) == 1
    assert exhausted[0][0] == env
    assert isinstance(exhausted[0][1], RuntimeError)
    assert str(exhausted[0][1]) == "try 4 failed"

    [(_method, props, body)] = broker.take_all(parked)
    assert Envelope.from_bytes(body) == env
    assert props.message_id == env.id
    assert props.headers["x-park-reason"] == "exhausted"
    assert props.headers["x-attempt"] == 4
    assert props.headers["x-request-id"] == "req-retry"
    assert props.headers["x-original-routing-key"] == key
    assert "try 4 failed" in props.headers["x-error"]
    assert broker.depth(consumer.queue) == 0
    for delay in delays:
        assert broker.depth(retry_queue_name(consumer.queue, delay)) == 0


def test_permanent_error_is_parked_at_once(broker: Broker):
    key = unique("k")
    calls: list[int | None] = []
    exhausted: list[BaseException] = []

    def handler(env: Envelope) -> None:
        calls.append(attempt_var.get())
        raise PermanentError("payload can never work")

    consumer = consumer_for(
        broker,
        handler,
        key,
        retry_delays=(0.2, 0.2),
        on_exhausted=lambda env, exc: exhausted.append(exc),
    )
    parked = f"{consumer.queue}.parked"
    with running(consumer):
        wait_until(lambda: broker.consumers(consumer.queue) == 1, what="consumer")
        publish(broker, Envelope.new(key, {}))
        wait_until(lambda: broker.depth(parked) == 1, what="the parked message")
        time.sleep(0.5)  # longer than any retry delay: a retry would have run by now
    assert calls == [1]
    assert len(exhausted) == 1 and isinstance(exhausted[0], PermanentError)
    [(_m, props, _body)] = broker.take_all(parked)
    assert props.headers["x-park-reason"] == "permanent"
    assert props.headers["x-attempt"] == 1


@pytest.mark.parametrize("body", [b"not json at all", b'{"id": "x"}', b"\xff\x00"])
def test_body_that_is_not_an_envelope_is_parked_at_once(broker: Broker, body: bytes):
    key = unique("k")
    handled: list[Envelope] = []
    consumer = consumer_for(broker, handled.append, key)
    parked = f"{consumer.queue}.parked"
    with running(consumer):
        wait_until(lambda: broker.consumers(consumer.queue) == 1, what="consumer")
        broker.publish_raw(key, body)
        wait_until(lambda: broker.depth(parked) == 1, what="the parked message")
    assert handled == []
    [(_m, props, parked_body)] = broker.take_all(parked)
    assert parked_body == body
    assert props.headers["x-park-reason"] == "malformed"
    assert broker.depth(consumer.queue) == 0


def test_stop_while_handling_finishes_and_acks_the_message_and_hands_back_the_rest(
    broker: Broker,
):
    key = unique("k")
    entered, release = threading.Event(), threading.Event()
    handled: list[str] = []

    def handler(env: Envelope) -> None:
        entered.set()
        release.wait(20)
        handled.append(env.id)

    consumer = consumer_for(broker, handler, key, prefetch=10)
    envelopes = [Envelope.new(key, {"n": n}) for n in range(3)]
    with running(consumer) as thread:
        wait_until(lambda: broker.consumers(consumer.queue) == 1, what="consumer")
        publish(broker, *envelopes)
        assert entered.wait(20)
        consumer.stop()
        thread.join(1.0)
        assert thread.is_alive()  # run() waits for the message in hand
        release.set()
        thread.join(20)
        assert not thread.is_alive()
    assert handled == [envelopes[0].id]
    # The first was acked; the two fetched ahead went back to the queue, none lost.
    remaining = [Envelope.from_bytes(body).id for _m, _p, body in broker.take_all(consumer.queue)]
    assert remaining == [e.id for e in envelopes[1:]]


def test_consumer_reconnects_after_the_broker_closes_its_connection(broker: Broker):
    key = unique("k")
    handled: list[str] = []
    name = unique("test-reconnecting-consumer")
    consumer = consumer_for(
        broker,
        lambda env: handled.append(env.id),
        key,
        connection_name=name,
        reconnect_backoff=(0.1, 1.0),
    )
    first, second = Envelope.new(key, {}), Envelope.new(key, {})
    with running(consumer):
        wait_until(lambda: broker.consumers(consumer.queue) == 1, what="consumer")
        publish(broker, first)
        wait_until(lambda: handled == [first.id], what="the first message")
        assert close_connections_named(name) == 1
        publish(broker, second)
        wait_until(lambda: len(handled) == 2, what="the second message")
        wait_until(lambda: broker.consumers(consumer.queue) == 1, what="consumer back")
    assert handled == [first.id, second.id]
    assert broker.depth(consumer.queue) == 0


def _rows(db_path, sql: str, *args) -> list[tuple]:
    db = sqlite3.connect(db_path, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        db.close()


@pytest.mark.slow
def test_consumer_killed_mid_message_gets_it_redelivered_and_handled_once(broker, tmp_path):
    key = unique("k")
    queue = broker.queue_name("killed")
    db = tmp_path / "handled.sqlite3"
    common = ["consumer", "--queue", queue, "--exchange", broker.exchange, "--binding", key]
    common += ["--db", str(db)]
    env = Envelope.new(key, {"job": 1}, request_id="req-kill")

    doomed = helper_process(*common, "--connection-name", unique("test-doomed"), "--hang")
    try:
        wait_until(lambda: broker.consumers(queue) == 1, what="the first consumer")
        publish(broker, env)
        wait_until(lambda: _rows(db, "SELECT pid FROM starts"), what="the handler to start")
    finally:
        doomed.kill()  # SIGKILL, in the middle of the handler
        doomed.wait(10)
    assert _rows(db, "SELECT * FROM completions") == []

    survivor = helper_process(*common, "--connection-name", unique("test-survivor"))
    try:
        wait_until(lambda: _rows(db, "SELECT * FROM completions"), what="the redelivered message")
    finally:
        survivor.send_signal(signal.SIGTERM)
        code, output = finish(survivor)
    assert code == 0, output

    starts = _rows(db, "SELECT envelope_id, pid, attempt FROM starts")
    assert starts == [(env.id, doomed.pid, 1), (env.id, survivor.pid, 1)]
    assert _rows(db, "SELECT envelope_id, pid FROM completions") == [(env.id, survivor.pid)]
    assert _rows(db, "SELECT envelope_id FROM done") == [(env.id,)]
    assert broker.depth(queue) == 0
    assert broker.depth(f"{queue}.parked") == 0


def test_changing_the_retry_delays_does_not_wedge_the_consumer(broker: Broker):
    """Delay queues are named after their delay: a consumer restarted with other
    RETRY_DELAYS declares new ones instead of failing with PRECONDITION_FAILED."""
    key = unique("k")
    queue = broker.queue_name("consumer")
    tries: list[int | None] = []

    def handler(env: Envelope) -> None:
        tries.append(attempt_var.get())
        if len(tries) == 1:
            raise RuntimeError("first try fails")

    for delays in ((0.5,), (0.2,)):
        consumer = Consumer(
            broker.url, queue, [key], handler, retry_delays=delays, exchange=broker.exchange
        )
        with running(consumer):
            wait_until(lambda c=consumer: broker.consumers(c.queue) == 1, what="consumer")
            if delays == (0.2,):
                publish(broker, Envelope.new(key, {"x": 1}))
                wait_until(lambda: len(tries) == 2, what="the retried message")
    assert tries == [1, 2]
    assert broker.depth(retry_queue_name(queue, 0.2)) == 0
    assert broker.depth(f"{queue}.parked") == 0


def test_a_batch_is_settled_after_its_end_and_what_failed_there_is_retried(broker: Broker):
    """batch_size > 1: the handler runs on each fetched message, on_batch_end names the
    ones whose deferred part failed; those come back at attempt 2, the rest are acked once."""
    key = unique("k")
    handled: list[tuple[str, int | None]] = []
    batch: list[str] = []
    batches: list[list[str]] = []
    gate = threading.Event()
    envs = [Envelope.new(key, {"n": n}, request_id=f"req-{n}") for n in range(6)]
    failing = envs[3].id

    def handler(env: Envelope) -> None:
        gate.wait(10)  # the first message waits, so the others are fetched meanwhile
        handled.append((env.id, attempt_var.get()))
        batch.append(env.id)

    def on_batch_end() -> dict[str, BaseException]:
        ids, batch[:] = list(batch), []
        batches.append(ids)
        if len(batches) <= 2 and failing in ids:
            return {failing: RuntimeError("its report failed")}
        return {}

    consumer = consumer_for(broker, handler, key, batch_size=10, on_batch_end=on_batch_end)
    with running(consumer):
        wait_until(lambda: broker.consumers(consumer.queue) == 1, what="consumer")
        publish(broker, *envs)
        wait_until(lambda: broker.depth(consumer.queue) == 0, what="all fetched")
        gate.set()
        wait_until(lambda: len(handled) == 7, what="six messages and one retry")
        time.sleep(0.5)  # a wrong redelivery would show now
    assert sorted(handled) == sorted([(e.id, 1) for e in envs] + [(failing, 2)])
    assert max(len(ids) for ids in batches) > 1, batches
    assert broker.depth(consumer.queue) == 0
    assert broker.depth(f"{consumer.queue}.parked") == 0
