"""Publisher against the real RabbitMQ: confirms, properties, unroutable, reconnect."""

from __future__ import annotations

import os
import socket

import pika
import pika.exceptions
import pytest

from eventpost.messaging import Envelope, Publisher, PublishError, Unroutable
from eventpost.timeutil import parse_time
from tests.integration._amqp import Broker, broker, close_connections_named, unique

pytestmark = pytest.mark.rabbitmq
__all__ = ["broker"]  # the fixture, imported for pytest


def publisher_for(b: Broker) -> Publisher:
    return Publisher(b.url, exchange=b.exchange, connection_name=unique("test-publisher"))


def test_publish_is_confirmed_persistent_and_carries_the_envelope(broker: Broker):
    sink = broker.bound_queue("thing.happened")
    env = Envelope.new("thing.happened", {"n": 1, "name": "Zoë"}, request_id="req-42")
    with publisher_for(broker) as publisher:
        assert not publisher.connected  # lazy: nothing opened before the first publish
        publisher.publish(env)
        assert publisher.connected

    [(method, props, body)] = broker.take_all(sink)
    assert Envelope.from_bytes(body) == env
    assert method.routing_key == "thing.happened"
    assert method.exchange == broker.exchange
    assert props.delivery_mode == pika.DeliveryMode.Persistent.value
    assert props.message_id == env.id
    assert props.type == "thing.happened"
    assert props.content_type == "application/json"
    assert props.headers == {"x-request-id": "req-42"}
    assert props.timestamp == int(parse_time(env.occurred_at).timestamp())


def test_routing_key_can_differ_from_the_type(broker: Broker):
    sink = broker.bound_queue("special.key")
    env = Envelope.new("thing.happened", {})
    with publisher_for(broker) as publisher:
        publisher.publish(env, routing_key="special.key")
    [(method, props, _body)] = broker.take_all(sink)
    assert method.routing_key == "special.key"
    assert props.type == "thing.happened"
    assert props.headers == {}  # no request ID, no header


def test_unroutable_message_raises_and_the_publisher_goes_on(broker: Broker):
    sink = broker.bound_queue("bound.key")
    with publisher_for(broker) as publisher:
        with pytest.raises(Unroutable):
            publisher.publish(Envelope.new("nobody.listens", {}))
        ok = Envelope.new("bound.key", {})
        publisher.publish(ok)
    assert [Envelope.from_bytes(body).id for _m, _p, body in broker.take_all(sink)] == [ok.id]


def test_unreachable_broker_raises_publish_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on that port now: connecting is refused at once.
    publisher = Publisher(f"amqp://guest:guest@127.0.0.1:{port}/%2F", connect_timeout=2.0)
    with pytest.raises(PublishError) as caught:
        publisher.publish(Envelope.new("thing.happened", {}))
    assert not isinstance(caught.value, Unroutable)
    publisher.close()


def test_connection_closed_by_the_broker_is_reopened_and_the_publish_retried(broker: Broker):
    sink = broker.bound_queue("thing.happened")
    first, second = Envelope.new("thing.happened", {}), Envelope.new("thing.happened", {})
    with publisher_for(broker) as publisher:
        publisher.publish(first)
        assert close_connections_named(publisher.connection_name) == 1
        publisher.publish(second)
    ids = [Envelope.from_bytes(body).id for _m, _p, body in broker.take_all(sink)]
    assert ids == [first.id, second.id]


def test_publish_many_keeps_the_order_and_reports_each_message(broker: Broker):
    sink = broker.bound_queue("thing.happened")
    batch = [Envelope.new("thing.happened", {"n": n}) for n in range(50)]
    nobody = Envelope.new("nobody.listens", {})
    poison = Envelope.new("x" * 300, {})  # a type AMQP cannot carry: never framed
    sent = [*batch[:20], nobody, *batch[20:30], poison, *batch[30:]]
    with publisher_for(broker) as publisher:
        results = publisher.publish_many(sent)
    assert isinstance(results[20], Unroutable)
    assert isinstance(results[31], PublishError) and not isinstance(results[31], Unroutable)
    assert isinstance(results[31].__cause__, pika.exceptions.ShortStringTooLong)
    assert [r for i, r in enumerate(results) if i not in (20, 31)] == [None] * 50
    taken = broker.take_all(sink)
    assert [Envelope.from_bytes(body).id for _m, _p, body in taken] == [e.id for e in batch]
    assert {props.delivery_mode for _m, props, _b in taken} == {pika.DeliveryMode.Persistent.value}


def test_publish_many_after_the_broker_closed_its_connection_reconnects(broker: Broker):
    sink = broker.bound_queue("thing.happened")
    first = [Envelope.new("thing.happened", {"n": n}) for n in range(3)]
    second = [Envelope.new("thing.happened", {"n": n}) for n in range(3, 6)]
    with publisher_for(broker) as publisher:
        assert publisher.publish_many(first) == [None] * 3
        # The batch connection is the only one left open: the declaring one was closed.
        assert close_connections_named(publisher.connection_name) == 1
        assert publisher.publish_many(second) == [None] * 3
        # Each reconnect gives back the sockets of the connection it replaces.
        opened = len(os.listdir("/proc/self/fd"))
        for _ in range(6):
            assert close_connections_named(publisher.connection_name) == 1
            assert publisher.publish_many(second[:1]) == [None]
        assert len(os.listdir("/proc/self/fd")) <= opened + 1
    ids = [Envelope.from_bytes(body).id for _m, _p, body in broker.take_all(sink)]
    assert ids == [e.id for e in first + second + second[:1] * 6]


def test_publish_many_to_an_unreachable_broker_reports_each_as_an_outage():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    publisher = Publisher(f"amqp://guest:guest@127.0.0.1:{port}/%2F", connect_timeout=2.0)
    results = publisher.publish_many([Envelope.new("thing.happened", {}) for _ in range(3)])
    assert len(results) == 3
    for result in results:
        assert isinstance(result, PublishError) and not isinstance(result, Unroutable)
        assert isinstance(result.__cause__, (pika.exceptions.AMQPConnectionError, OSError))
    publisher.close()
