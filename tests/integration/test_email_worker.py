"""The email-sender's consumer against the real RabbitMQ and real aiosmtpd servers: delivery,
retries with growing delays, permanent failures, timeouts, parking, duplicates, outcomes.

Every test has its own exchange and queues (see tests.integration._amqp), so it neither takes
nor receives messages of anything else running on the broker."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pika
import pytest

from email_sender.delivery_log import DeliveryLog
from eventpost.messaging import Envelope, Publisher, PublishError
from eventpost.storage.sqlite import SqliteStore
from tests.integration._amqp import Broker, broker, unique, wait_until
from tests.integration.test_email_support import (
    MAIL_FROM,
    ScriptedHandler,
    SilentServer,
    Wired,
    consuming,
    email_job,
    parked,
    smtp_server,
    wire,
)

pytestmark = pytest.mark.rabbitmq
__all__ = ["broker"]  # the fixture, imported for pytest


def collect(wired: Wired, into: list[Envelope], n: int, what: str = "outcomes") -> None:
    """Wait until ``n`` outcomes were collected in ``into``."""

    def enough() -> bool:
        into.extend(wired.outcomes())
        return len(into) >= n

    wait_until(enough, timeout=30, what=what)


def test_job_is_delivered_with_its_headers_both_parts_escaped_html_and_reported(
    broker: Broker, tmp_path
):
    handler = ScriptedHandler()
    with smtp_server(handler) as server:
        wired = wire(broker, tmp_path, server.port)
        job = email_job()
        with consuming(wired):
            wired.publish(job)
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 1)
        wired.sender.close()
    assert len(handler.accepted) == 1
    msg = handler.accepted[0]
    payload = job.payload
    assert msg["From"] == MAIL_FROM
    assert msg["To"] == payload["to"]
    assert msg["Subject"] == "Reminder: Meetup <script>alert('x')</script>"
    assert msg["X-Request-ID"] == job.request_id
    assert msg["X-EventPost-Idempotency-Key"] == payload["idempotency_key"]
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@eventpost.test>")
    assert msg.get_content_type() == "multipart/alternative"
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert "<script>" not in html
    assert "Meetup &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "Meetup <script>alert('x')</script>" in text
    assert "Tuesday 1 December 2026, 19:00 UTC" in text
    assert "The Hall, 1 Main St" in text

    [sent] = outcomes
    assert sent.type == "email.sent"
    assert sent.request_id == job.request_id
    assert sent.payload["correlation"] == payload["correlation"]
    assert sent.payload["idempotency_key"] == payload["idempotency_key"]
    assert sent.payload["to"] == payload["to"]
    assert sent.payload["attempts"] == 1
    assert sent.payload["message_id"] == msg["Message-ID"]
    assert sent.payload["sent_at"].endswith("Z")
    assert broker.depth(wired.consumer.queue) == 0
    assert parked(broker, wired.consumer.queue) == []


def test_user_events_become_welcome_and_verification_emails(broker: Broker, tmp_path):
    handler = ScriptedHandler()
    user = unique("user")
    created = Envelope.new(
        "user.created",
        {"user_id": user, "username": "ann", "email": f"{user}@example.com"},
        request_id="req-signup",
    )
    added = Envelope.new(
        "user.email_added",
        {
            "user_id": user,
            "username": "ann",
            "email": f"second-{user}@example.com",
            "token": "tok-XYZ-123",
            "expires_at": "2026-12-02T19:00:00Z",
        },
        request_id="req-add",
    )
    with smtp_server(handler) as server:
        wired = wire(broker, tmp_path, server.port)
        with consuming(wired):
            wired.publish(created, added)
            wait_until(lambda: len(handler.accepted) == 2, timeout=30, what="two emails")
        wired.sender.close()
    by_to = {str(m["To"]): m for m in handler.accepted}
    welcome, verification = by_to[f"{user}@example.com"], by_to[f"second-{user}@example.com"]
    assert welcome["To"] == f"{user}@example.com"
    assert "Welcome" in welcome["Subject"]
    assert welcome["X-Request-ID"] == "req-signup"
    assert verification["To"] == f"second-{user}@example.com"
    assert verification["X-Request-ID"] == "req-add"
    lines = verification.get_body(("plain",)).get_content().splitlines()
    assert "Verification token: tok-XYZ-123" in lines
    # No correlation, so no outcome is published.
    assert wired.outcomes() == []


def test_421_twice_then_accepted_is_delivered_once_after_growing_delays(broker: Broker, tmp_path):
    handler = ScriptedHandler(["421 4.7.0 Try again later", "421 4.7.0 Try again later"])
    with smtp_server(handler) as server:
        wired = wire(broker, tmp_path, server.port, retry_delays=(0.2, 0.5, 1.0))
        with consuming(wired):
            wired.publish(email_job())
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 1)
        wired.sender.close()
    assert len(handler.accepted) == 1
    assert len(handler.attempts) == 3
    first_gap = handler.attempts[1] - handler.attempts[0]
    second_gap = handler.attempts[2] - handler.attempts[1]
    # The delay queues hold the job at least their TTL each time, and the TTLs grow.
    assert first_gap >= 0.2
    assert second_gap >= 0.5
    [sent] = outcomes
    assert sent.type == "email.sent"
    assert sent.payload["attempts"] == 3
    assert parked(broker, wired.consumer.queue) == []


def test_550_is_not_retried_parked_and_reported_failed_with_the_reply(broker: Broker, tmp_path):
    handler = ScriptedHandler(["550 5.1.1 <nobody@example.com>: Recipient unknown"])
    with smtp_server(handler) as server:
        wired = wire(broker, tmp_path, server.port)
        job = email_job()
        with consuming(wired):
            wired.publish(job)
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 1)
            # A copy of the same job is not tried again either: it is reported again.
            wired.publish(job)
            collect(wired, outcomes, 2)
        wired.sender.close()
    assert handler.accepted == []
    assert len(handler.attempts) == 1
    assert [o.type for o in outcomes] == ["email.failed", "email.failed"]
    failed = outcomes[0].payload
    assert failed["error"] == "550 5.1.1 <nobody@example.com>: Recipient unknown"
    assert failed["attempts"] == 1
    assert failed["correlation"] == job.payload["correlation"]
    assert outcomes[0].id == outcomes[1].id  # the same outcome, recognisably
    assert broker.depth(wired.consumer.queue) == 0
    # Parked once (to be replayed when fixed); the copy was only reported again.
    [kept] = parked(broker, wired.consumer.queue)
    assert kept["id"] == job.id


@pytest.mark.slow
def test_a_server_that_never_answers_times_out_and_the_job_is_retried(broker: Broker, tmp_path):
    with SilentServer() as silent:
        wired = wire(broker, tmp_path, silent.port, retry_delays=(0.2, 0.5), smtp_timeout=0.5)
        job = email_job()
        with consuming(wired):
            wired.publish(job)
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 1, what="email.failed after the last try")
        wired.sender.close()
        tries = silent.accepted
    assert tries == 3  # every try timed out on a fresh connection
    [failed] = outcomes
    assert failed.type == "email.failed"
    assert failed.payload["attempts"] == 3
    assert "timed out" in failed.payload["error"]
    [kept] = parked(broker, wired.consumer.queue)
    assert kept["id"] == job.id


def test_an_invalid_job_is_parked_and_reported_failed(broker: Broker, tmp_path):
    handler = ScriptedHandler()
    with smtp_server(handler) as server:
        wired = wire(broker, tmp_path, server.port)
        bad = Envelope.new(
            "email.send",
            {
                "to": "not-an-address",
                "idempotency_key": "bad-1",
                "subject": "s",
                "text": "t",
                "correlation": {"notification_id": "n-bad"},
            },
        )
        with consuming(wired):
            wired.publish(bad)
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 1)
            broker.publish_raw("email.send", b"{not json", pika.BasicProperties())
            wait_until(
                lambda: broker.depth(f"{wired.consumer.queue}.parked") == 2,
                timeout=30,
                what="both parked",
            )
        wired.sender.close()
    assert handler.attempts == []
    [failed] = outcomes
    assert failed.type == "email.failed"
    assert failed.payload["correlation"] == {"notification_id": "n-bad"}
    assert "valid email address" in failed.payload["error"]
    assert broker.depth(wired.consumer.queue) == 0


def test_a_duplicate_job_is_sent_once_and_reported_again(broker: Broker, tmp_path):
    handler = ScriptedHandler()
    with smtp_server(handler) as server:
        wired = wire(broker, tmp_path, server.port)
        job = email_job()
        copy = Envelope.new("email.send", job.payload, request_id="req-copy")
        with consuming(wired):
            wired.publish(job)
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 1)
            wired.publish(copy)
            collect(wired, outcomes, 2)
        wired.sender.close()
    assert len(handler.accepted) == 1
    assert [o.type for o in outcomes] == ["email.sent", "email.sent"]
    assert outcomes[0].payload == outcomes[1].payload
    assert outcomes[0].id == outcomes[1].id


def test_two_copies_of_a_job_handled_at_once_make_one_email(broker: Broker, tmp_path):
    """A publisher that lost its confirm with a cluster node publishes again: two consumers
    of one email-sender take both copies side by side. The second waits for the first's
    send (its lease in the delivery log) and only reports it again."""
    handler = ScriptedHandler(["stall:1.0"])
    with smtp_server(handler) as server:
        first, second = wire(broker, tmp_path, server.port), wire(broker, tmp_path, server.port)
        job = email_job()
        copy = Envelope.new("email.send", job.payload, request_id="req-copy")
        sending = threading.Thread(target=first.sender.handle, args=(job,))
        sending.start()
        assert handler.stalling.wait(10), "the first send never reached DATA"
        second.sender.handle(copy)  # returns once the first send is done
        sending.join(10)
        outcomes: list[Envelope] = []
        collect(first, outcomes, 2)
        first.sender.close()
        second.sender.close()
    assert len(handler.accepted) == 1
    assert [o.type for o in outcomes] == ["email.sent", "email.sent"]
    assert outcomes[0].payload == outcomes[1].payload


def test_when_only_the_report_keeps_failing_the_email_is_sent_once_and_reported_sent(
    broker: Broker, tmp_path
):
    failures = {"left": 2}

    class FlakyPublisher(Publisher):
        def publish(self, envelope, routing_key=None):
            if failures["left"] > 0:
                failures["left"] -= 1
                raise PublishError("broker unreachable (test)")
            super().publish(envelope, routing_key)

    handler = ScriptedHandler()
    with smtp_server(handler) as server:
        wired = wire(broker, tmp_path, server.port, retry_delays=(0.2,))
        wired.sender.publisher_factory = lambda: FlakyPublisher(
            broker.url, exchange=broker.exchange, connection_name=unique("flaky")
        )
        with consuming(wired):
            wired.publish(email_job())
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 1)
        wired.sender.close()
    assert len(handler.accepted) == 1
    [sent] = outcomes
    assert sent.type == "email.sent"
    assert sent.payload["attempts"] == 1


# -- batches: records and reports written together at the end of a batch -------------------


class CountingPublisher(Publisher):
    """Counts the messages of each publish_many call; fails the first ``fail_batches``."""

    def __init__(self, *args, sizes: list[int], fail_batches: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sizes = sizes
        self.fail_batches = fail_batches

    def publish_many(self, envelopes, *, timeout=None):
        self.sizes.append(len(envelopes))
        if len(self.sizes) <= self.fail_batches:
            return [PublishError("broker unreachable (test)") for _ in envelopes]
        return super().publish_many(envelopes, timeout=timeout)


def batched(broker: Broker, tmp_path, port: int, sizes: list[int], fail_batches: int = 0):
    wired = wire(broker, tmp_path, port, retry_delays=(0.2,), batch_size=10)
    wired.sender.publisher_factory = lambda: CountingPublisher(
        broker.url,
        exchange=broker.exchange,
        connection_name=unique("counting"),
        sizes=sizes,
        fail_batches=fail_batches,
    )
    return wired


def sent_records(tmp_path, keys: list[str]) -> dict[str, str | None]:
    store = SqliteStore(tmp_path / "email_sender.sqlite3")
    try:
        log = DeliveryLog(store)
        return {key: (record.status if (record := log.get(key)) else None) for key in keys}
    finally:
        store.close()


def test_a_batch_is_sent_one_by_one_then_recorded_and_reported_together(broker: Broker, tmp_path):
    # The first email stalls, so the rest are fetched meanwhile and taken as one batch.
    handler = ScriptedHandler(["stall:0.5"])
    sizes: list[int] = []
    with smtp_server(handler) as server:
        wired = batched(broker, tmp_path, server.port, sizes)
        jobs = [email_job() for _ in range(12)]
        with consuming(wired):
            wired.publish(*jobs)
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 12)
            wait_until(lambda: broker.depth(wired.consumer.queue) == 0, what="all acked")
        wired.sender.close()
    assert sorted(m["To"] for m in handler.accepted) == sorted(j.payload["to"] for j in jobs)
    assert sorted(o.payload["idempotency_key"] for o in outcomes) == sorted(
        j.payload["idempotency_key"] for j in jobs
    )
    assert {o.type for o in outcomes} == {"email.sent"}
    assert max(sizes) > 1, sizes  # reports went out together
    assert sum(sizes) == 12
    keys = [j.payload["idempotency_key"] for j in jobs]
    assert sent_records(tmp_path, keys) == dict.fromkeys(keys, "sent")
    assert parked(broker, wired.consumer.queue) == []


def test_two_copies_of_a_job_in_one_batch_make_one_email(broker: Broker, tmp_path):
    handler = ScriptedHandler(["stall:0.5"])
    sizes: list[int] = []
    with smtp_server(handler) as server:
        wired = batched(broker, tmp_path, server.port, sizes)
        first, job = email_job(), email_job()
        copy = Envelope.new("email.send", job.payload, request_id="req-copy")
        with consuming(wired):
            wired.publish(first, job, copy)
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 2)
            wait_until(lambda: broker.depth(wired.consumer.queue) == 0, what="all acked")
        wired.sender.close()
    assert sorted(m["To"] for m in handler.accepted) == sorted(
        [first.payload["to"], job.payload["to"]]
    )
    assert {o.payload["idempotency_key"] for o in outcomes} == {
        first.payload["idempotency_key"],
        job.payload["idempotency_key"],
    }
    assert parked(broker, wired.consumer.queue) == []


def test_when_a_batch_cannot_be_reported_its_messages_are_retried_and_not_sent_again(
    broker: Broker, tmp_path
):
    handler = ScriptedHandler(["stall:0.5"])
    sizes: list[int] = []
    with smtp_server(handler) as server:
        wired = batched(broker, tmp_path, server.port, sizes, fail_batches=2)
        jobs = [email_job() for _ in range(6)]
        with consuming(wired):
            wired.publish(*jobs)
            outcomes: list[Envelope] = []
            collect(wired, outcomes, 6)
            wait_until(lambda: broker.depth(wired.consumer.queue) == 0, what="all acked")
        wired.sender.close()
    # Every email went out exactly once, though the reports of the first two batches failed
    # and their messages came back: the delivery log said sent, so they were reported again.
    assert sorted(m["To"] for m in handler.accepted) == sorted(j.payload["to"] for j in jobs)
    assert {o.payload["idempotency_key"] for o in outcomes} == {
        j.payload["idempotency_key"] for j in jobs
    }
    assert sum(sizes) == 6  # each in a failed batch report; the retries reported one by one
    assert parked(broker, wired.consumer.queue) == []


def test_a_long_batch_records_its_sent_emails_before_their_leases_run_out(broker: Broker, tmp_path):
    # The sender called as its consumer calls it in batch mode, on a clock the test moves:
    # a send's bound is 60 s, a batch's record holds its job 120 s.
    now = [datetime(2026, 12, 4, 12, 0, tzinfo=UTC)]
    handler = ScriptedHandler([])
    with smtp_server(handler) as server:
        sender = wire(broker, tmp_path, server.port, batch_size=10).sender
        sender.clock = lambda: now[0]
        sender.lease = timedelta(seconds=60)
        jobs = [email_job() for _ in range(4)]
        keys = [j.payload["idempotency_key"] for j in jobs]
        sender.handle(jobs[0])
        sender.handle(jobs[1])  # a quick batch: nothing is written before its end
        assert sent_records(tmp_path, keys[:2]) == dict.fromkeys(keys[:2], "sending")
        now[0] += timedelta(seconds=61)  # the first lease has 59 s left: less than a send
        sender.handle(jobs[2])
        assert sent_records(tmp_path, keys[:3]) == {
            keys[0]: "sent",
            keys[1]: "sent",
            keys[2]: "sending",
        }
        now[0] += timedelta(seconds=10)  # the third's lease still has 110 s
        sender.handle(jobs[3])
        assert sent_records(tmp_path, keys)[keys[2]] == "sending"
        assert sender.flush() == {}
        sender.close()
    assert sent_records(tmp_path, keys) == dict.fromkeys(keys, "sent")
    assert sorted(m["To"] for m in handler.accepted) == sorted(j.payload["to"] for j in jobs)
