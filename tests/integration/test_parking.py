"""Parked messages and the way back: an email job the SMTP server refuses with 550 is
parked; ``invoke parked`` lists it (type, reason, age, request id); the mailbox is fixed;
``invoke parked --replay --id ...`` moves it back and the email arrives, once. The real
email-sender (its consumer on a test exchange of the shared RabbitMQ) and the aiosmtpd sink
told to refuse the address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.smtp_sink import FileSinkHandler, Mailbox, SmtpSink
from eventpost.messaging import Envelope
from tests.integration._amqp import REPO_ROOT, Broker, broker, wait_until
from tests.integration.test_email_support import consuming, email_job, wire

pytestmark = pytest.mark.rabbitmq
__all__ = ["broker"]


def invoke_parked(amqp_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``invoke parked ARGS`` against ``amqp_url``, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", "parked", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "AMQP_URL": amqp_url, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def listed(amqp_url: str, queue: str) -> list[dict]:
    done = invoke_parked(amqp_url, "--queue", queue, "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def outcome_types(outcomes: list[Envelope], key: str) -> list[str]:
    return [o.type for o in outcomes if o.payload["idempotency_key"] == key]


@pytest.mark.slow  # four `invoke parked` processes
def test_a_550_is_parked_listed_replayed_once_fixed_and_delivered_once(
    broker: Broker, tmp_path: Path
):
    handler = FileSinkHandler(tmp_path / "mail")
    mailbox = Mailbox(tmp_path / "mail")
    fixed, other = email_job(), email_job()
    for job in (fixed, other):
        handler.refuse(job.payload["to"])
    outcomes: list[Envelope] = []
    with SmtpSink(tmp_path / "mail", handler=handler) as sink:
        wired = wire(broker, tmp_path, sink.port)
        queue = wired.consumer.queue
        with consuming(wired):
            wired.publish(fixed, other)
            wait_until(lambda: broker.depth(f"{queue}.parked") == 2, what="both jobs parked")
            parked = {m["id"]: m for m in listed(broker.url, queue)}
            assert set(parked) == {fixed.id, other.id}
            entry = parked[fixed.id]
            assert (entry["queue"], entry["type"], entry["reason"]) == (
                queue,
                "email.send",
                "permanent",
            )
            assert "550 5.1.1" in entry["error"] and fixed.payload["to"] in entry["error"]
            assert entry["request_id"] == fixed.request_id
            assert entry["age_seconds"] is not None and entry["age_seconds"] >= 0
            # Listing takes nothing away.
            assert broker.depth(f"{queue}.parked") == 2

            handler.accept(fixed.payload["to"])  # the mailbox exists now
            done = invoke_parked(broker.url, "--queue", queue, "--replay", "--id", fixed.id)
            assert done.returncode == 0, done.stderr
            assert "1 replayed" in done.stdout
            mailbox.wait_for(to=fixed.payload["to"], timeout=30)
            wait_until(
                lambda: (
                    outcomes.extend(wired.outcomes()),
                    "email.sent" in outcome_types(outcomes, fixed.payload["idempotency_key"]),
                )[1],
                what="email.sent for the replayed job",
            )
        wired.sender.close()
    # Only the one asked for went back; the other still waits in the parking queue.
    [still] = listed(broker.url, queue)
    assert still["id"] == other.id
    assert len(mailbox.find(to=fixed.payload["to"])) == 1
    assert mailbox.find(to=other.payload["to"]) == []
    outcomes.extend(wired.outcomes())
    assert outcome_types(outcomes, fixed.payload["idempotency_key"]) == [
        "email.failed",
        "email.sent",
    ]
    assert broker.depth(queue) == 0


def test_replaying_an_id_that_is_not_parked_says_so(broker: Broker):
    queue = broker.queue_name("nothing-parked")
    done = invoke_parked(broker.url, "--queue", queue, "--replay", "--id", "no-such-id")
    assert done.returncode != 0
    assert "not found" in done.stderr
    table = invoke_parked(broker.url, "--queue", queue)
    assert table.returncode == 0 and "nothing parked" in table.stdout
