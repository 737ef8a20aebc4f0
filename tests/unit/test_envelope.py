"""Envelope: creation, the JSON form, strict parsing, AMQP properties, backoff (no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pika
import pytest

from eventpost.loops import backoff_delay
from eventpost.messaging import Envelope, MalformedMessage

FIXED = datetime(2026, 12, 1, 19, 0, 0, 123456, tzinfo=UTC)


def make(**changes) -> Envelope:
    env = Envelope.new(
        "user.created",
        {"user_id": "u1", "email": "ä@example.com"},
        request_id="req-1",
        clock=lambda: FIXED,
        id_factory=lambda: "id-1",
    )
    return Envelope(**{**env.to_dict(), **changes})


def test_new_uses_injected_clock_and_id_and_copies_payload():
    payload = {"a": 1}
    env = Envelope.new("x.happened", payload, clock=lambda: FIXED, id_factory=lambda: "abc")
    payload["a"] = 2
    assert env.id == "abc"
    assert env.type == "x.happened"
    assert env.occurred_at == "2026-12-01T19:00:00.123456Z"
    assert env.request_id is None
    assert env.payload == {"a": 1}


def test_new_ids_are_unique_by_default():
    ids = {Envelope.new("x", {}).id for _ in range(50)}
    assert len(ids) == 50


def test_bytes_round_trip():
    env = make()
    body = env.to_bytes()
    assert json.loads(body) == env.to_dict()
    assert Envelope.from_bytes(body) == env


def test_dict_round_trip_ignores_bookkeeping_fields():
    record = {**make().to_dict(), "lease_owner": "relay-1", "seq": 7}
    assert Envelope.from_dict(record) == make()


def test_occurred_at_is_normalised_to_utc():
    env = Envelope.from_dict({**make().to_dict(), "occurred_at": "2026-12-01T20:00:00+01:00"})
    assert env.occurred_at == "2026-12-01T19:00:00.000000Z"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'"a string"',
        b"{}",
    ],
)
def test_from_bytes_rejects_non_envelopes(body):
    with pytest.raises(MalformedMessage):
        Envelope.from_bytes(body)


@pytest.mark.parametrize(
    "changes",
    [
        {"id": ""},
        {"id": 5},
        {"type": None},
        {"type": "   "},
        {"occurred_at": "2026-12-01T20:00:00"},  # no offset
        {"occurred_at": "yesterday"},
        {"occurred_at": 1700000000},
        {"request_id": 12},
        {"payload": []},
        {"payload": "x"},
    ],
)
def test_from_dict_rejects_bad_fields(changes):
    with pytest.raises(MalformedMessage):
        Envelope.from_bytes(json.dumps({**make().to_dict(), **changes}).encode())


@pytest.mark.parametrize("missing", ["id", "type", "occurred_at", "request_id", "payload"])
def test_from_dict_rejects_missing_fields(missing):
    data = make().to_dict()
    del data[missing]
    with pytest.raises(MalformedMessage, match=missing):
        Envelope.from_dict(data)


def test_malformed_message_is_a_value_error():
    assert issubclass(MalformedMessage, ValueError)


def test_amqp_properties():
    props = make().amqp_properties({"x-attempt": 2})
    assert props.message_id == "id-1"
    assert props.type == "user.created"
    assert props.content_type == "application/json"
    assert props.delivery_mode == pika.DeliveryMode.Persistent.value
    assert props.timestamp == int(FIXED.timestamp())
    assert props.headers == {"x-request-id": "req-1", "x-attempt": 2}


def test_amqp_properties_without_request_id_leave_the_header_out():
    assert make(request_id=None).amqp_properties().headers == {}


def test_backoff_grows_is_capped_and_jittered():
    assert backoff_delay(0, 0.5, 30.0, rand=lambda: 0.0) == 0.25
    assert backoff_delay(0, 0.5, 30.0, rand=lambda: 0.999) == pytest.approx(0.5, abs=0.001)
    assert backoff_delay(3, 0.5, 30.0, rand=lambda: 0.999) == pytest.approx(4.0, abs=0.01)
    assert backoff_delay(100, 0.5, 30.0, rand=lambda: 0.999) == pytest.approx(30.0, abs=0.1)
