"""Worker: runs consumers and loops in threads, stops them all together."""

from __future__ import annotations

import threading

import pytest

from eventpost.messaging import Consumer, Envelope, Publisher, Worker
from tests.integration._amqp import Broker, broker, unique, wait_until

__all__ = ["broker"]  # the fixture, imported for pytest


@pytest.mark.rabbitmq
def test_stop_stops_every_part_and_run_returns_zero(broker: Broker):
    key = unique("k")
    handled: list[str] = []
    consumer = Consumer(
        broker.url,
        broker.queue_name("worker"),
        [key],
        lambda env: handled.append(env.id),
        retry_delays=[0.2],
        exchange=broker.exchange,
        connection_name=unique("test-worker-consumer"),
    )
    loop_ran, loop_stopped = threading.Event(), threading.Event()

    def loop(stop: threading.Event) -> None:
        loop_ran.set()
        stop.wait()
        loop_stopped.set()

    worker = Worker("test-worker")
    worker.add_consumer(consumer)
    worker.add_loop("loop", loop)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run(handle_signals=False)))
    thread.start()
    try:
        wait_until(lambda: broker.consumers(consumer.queue) == 1, what="consumer")
        env = Envelope.new(key, {})
        with Publisher(broker.url, exchange=broker.exchange) as publisher:
            publisher.publish(env)
        wait_until(lambda: handled == [env.id], what="the message")
        assert loop_ran.is_set()
    finally:
        worker.stop()
        thread.join(30)
    assert result == [0]
    assert loop_stopped.is_set()
    assert broker.consumers(consumer.queue) == 0


def test_a_crashing_part_stops_the_others_and_run_returns_one():
    stopped = threading.Event()

    def healthy(stop: threading.Event) -> None:
        stop.wait()
        stopped.set()

    def crashing(_stop: threading.Event) -> None:
        raise RuntimeError("boom")

    worker = Worker("test-worker")
    worker.add_loop("healthy", healthy)
    worker.add_loop("crashing", crashing)
    assert worker.run(handle_signals=False, stop_timeout=10) == 1
    assert stopped.is_set()
