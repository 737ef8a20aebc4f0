"""Topology arguments per queue type, several AMQP URLs, and the parked-message helpers
(no broker needed)."""

from __future__ import annotations

from datetime import timedelta

import pika
import pytest

from eventpost.messaging.parking import ParkedMessage, describe, format_table, replay_properties
from eventpost.messaging.topology import (
    connection_parameters,
    delay_queue_arguments,
    queue_arguments,
    split_urls,
)
from eventpost.settings import Settings
from eventpost.timeutil import format_time, utcnow

TWO = "amqp://guest:guest@127.0.0.1:5701/%2F, amqp://u:p@10.0.0.2:5702/v?socket_timeout=9"


def test_queue_type_defaults_to_classic_and_reads_amqp_queue_type():
    assert Settings.from_env(env={}).amqp_queue_type == "classic"
    assert Settings.from_env(env={"AMQP_QUEUE_TYPE": "Quorum"}).amqp_queue_type == "quorum"
    with pytest.raises(ValueError, match="AMQP_QUEUE_TYPE"):
        Settings.from_env(env={"AMQP_QUEUE_TYPE": "stream"})


def test_classic_queues_are_declared_as_before_and_quorum_ones_say_so():
    assert queue_arguments("classic") == {}
    assert queue_arguments("quorum") == {"x-queue-type": "quorum"}
    with pytest.raises(ValueError):
        queue_arguments("lazy")


def test_quorum_delay_queues_dead_letter_at_least_once():
    classic = delay_queue_arguments("q", 0.5, "classic")
    assert classic == {
        "x-message-ttl": 500,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "q",
    }
    quorum = delay_queue_arguments("q", 0.5, "quorum")
    assert quorum == {
        **classic,
        "x-queue-type": "quorum",
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def test_several_urls_become_parameters_in_their_order():
    assert split_urls(TWO) == [
        "amqp://guest:guest@127.0.0.1:5701/%2F",
        "amqp://u:p@10.0.0.2:5702/v?socket_timeout=9",
    ]
    first, second = connection_parameters(TWO, "me", timeout=3.0)
    assert (first.host, first.port, first.socket_timeout) == ("127.0.0.1", 5701, 3.0)
    assert (second.host, second.port, second.virtual_host) == ("10.0.0.2", 5702, "v")
    assert second.socket_timeout == 9  # the URL's own option wins
    assert first.client_properties == second.client_properties == {"connection_name": "me"}
    with pytest.raises(ValueError):
        split_urls(" , ")


def test_one_url_is_a_list_of_one():
    [only] = connection_parameters(Settings().amqp_url, "me")
    assert only.port == 5672


def _parked_properties(**headers: object) -> pika.BasicProperties:
    return pika.BasicProperties(
        message_id="m1",
        type="email.send",
        content_type="application/json",
        headers={
            "x-request-id": "req-1",
            "x-park-reason": "permanent",
            "x-error": "RefusedForGood: 550 no such mailbox",
            "x-attempt": 3,
            "x-original-routing-key": "email.send",
            "x-death": [{"count": 1}],
            **headers,
        },
    )


def test_a_parked_message_is_described_with_its_age():
    now = utcnow()
    props = _parked_properties(**{"x-parked-at": format_time(now - timedelta(seconds=90))})
    body = b'{"id": "m1", "type": "email.send", "request_id": "req-1", "payload": {}}'
    parked = describe("email-sender.jobs", props, body, clock=lambda: now)
    assert parked == ParkedMessage(
        queue="email-sender.jobs",
        id="m1",
        type="email.send",
        reason="permanent",
        error="RefusedForGood: 550 no such mailbox",
        parked_at=format_time(now - timedelta(seconds=90)),
        age_seconds=90.0,
        request_id="req-1",
        attempt=3,
        replayed=0,
    )
    table = format_table([parked])
    assert "1.5m" in table and "req-1" in table and "550 no such mailbox" in table


def test_a_malformed_parked_body_is_still_listed():
    parked = describe("q", pika.BasicProperties(headers={"x-park-reason": "malformed"}), b"\xff")
    assert (parked.id, parked.reason, parked.age_seconds) == ("", "malformed", None)
    assert format_table([]) == "nothing parked"


def test_a_replayed_copy_starts_again_without_the_park_headers():
    props = replay_properties(_parked_properties(**{"x-replayed": 1}))
    assert props.headers == {
        "x-request-id": "req-1",
        "x-attempt": 1,
        "x-original-routing-key": "email.send",
        "x-replayed": 2,
    }
    assert (props.message_id, props.type, props.delivery_mode) == ("m1", "email.send", 2)
