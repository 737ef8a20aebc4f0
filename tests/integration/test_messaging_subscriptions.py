"""Relays declare every subscription before publishing: a message sent before its consumer
ever started waits in the consumer's queue instead of coming back unroutable."""

from __future__ import annotations

import pika
import pytest

from eventpost import contracts
from eventpost.messaging import Envelope, Publisher, Unroutable
from tests.e2e._suite import isolated_vhost

pytestmark = pytest.mark.rabbitmq


def test_a_message_published_before_its_consumer_started_waits_for_it():
    with isolated_vhost() as url:  # a fresh broker namespace: no queue exists yet
        envelope = Envelope.new(
            contracts.USER_CREATED, {"user_id": "u1", "username": "ann", "email": "a@x.test"}
        )
        with Publisher(url) as bare, pytest.raises(Unroutable):
            bare.publish(envelope)
        with Publisher(url, subscriptions=contracts.SUBSCRIPTIONS) as publisher:
            publisher.publish(envelope)
        connection = pika.BlockingConnection(pika.URLParameters(url))
        try:
            channel = connection.channel()
            method, _, body = channel.basic_get("email-sender.jobs", auto_ack=True)
            assert method is not None
            assert Envelope.from_bytes(body) == envelope
            for queue in contracts.SUBSCRIPTIONS:
                assert channel.queue_declare(queue, passive=True).method.message_count == 0
        finally:
            connection.close()
