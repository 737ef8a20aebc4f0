"""``python -m email_sender`` as a real process: killed (SIGKILL) in the middle of a send, the
job is redelivered to the next worker and delivered; stopped (SIGTERM) in the middle of a
send, it finishes and settles, and every job is either delivered or still in the queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from eventpost.messaging import Envelope, Publisher
from tests.integration._amqp import Broker, broker, unique, wait_until
from tests.integration.test_email_support import ScriptedHandler, email_job, smtp_server

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
__all__ = ["broker"]  # the fixture, imported for pytest

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def worker_process(
    b: Broker, queue: str, smtp_port: int, data_dir: Path, log_name: str, *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "AMQP_URL": b.url,
        "DATA_DIR": str(data_dir),
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_TIMEOUT": "30",
        "RETRY_DELAYS": "0.2,0.5,1",
        "MAIL_FROM": "EventPost Tests <no-reply@eventpost.test>",
    }
    log_path = data_dir / f"{log_name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "email_sender",
                "--queue",
                queue,
                "--exchange",
                b.exchange,
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: b.consumers(queue) >= 1 or proc.poll() is not None,
                timeout=30,
                what="the worker to consume",
            )
            assert proc.poll() is None, log_path.read_text()
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def publish(b: Broker, *envelopes: Envelope) -> None:
    with Publisher(b.url, exchange=b.exchange, connection_name=unique("email-pub")) as publisher:
        for envelope in envelopes:
            publisher.publish(envelope)


def keys_in(b: Broker, queue: str) -> list[str]:
    return [json.loads(body)["payload"]["idempotency_key"] for _, _, body in b.take_all(queue)]


def test_sigkill_during_a_send_the_job_is_redelivered_and_delivered(broker: Broker, tmp_path):
    queue = broker.queue_name("email-proc")
    outcomes = broker.bound_queue("email.sent", "email.failed")
    handler = ScriptedHandler(["hang"])  # the first DATA never gets an answer
    job = email_job()
    with smtp_server(handler) as server:
        with worker_process(broker, queue, server.port, tmp_path, "first") as first:
            publish(broker, job)
            assert handler.stalling.wait(30), (tmp_path / "first.log").read_text()
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        assert handler.accepted == []
        with worker_process(broker, queue, server.port, tmp_path, "second") as second:
            wait_until(lambda: len(handler.accepted) == 1, timeout=30, what="the redelivery")
            wait_until(lambda: broker.depth(outcomes) == 1, timeout=30, what="email.sent")
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    assert len(handler.attempts) == 2
    assert [str(m["X-EventPost-Idempotency-Key"]) for m in handler.accepted] == [
        job.payload["idempotency_key"]
    ]
    [(_, _, body)] = broker.take_all(outcomes)
    assert Envelope.from_bytes(body).type == "email.sent"
    assert broker.depth(queue) == 0
    assert broker.depth(f"{queue}.parked") == 0


def test_sigterm_during_a_send_finishes_it_and_loses_nothing(broker: Broker, tmp_path):
    queue = broker.queue_name("email-proc")
    handler = ScriptedHandler(["stall:2"])
    jobs = [email_job() for _ in range(3)]
    all_keys = {job.payload["idempotency_key"] for job in jobs}
    with smtp_server(handler) as server:
        # One consumer: the job in hand is the first one published.
        args = ("--concurrency", "1")
        with worker_process(broker, queue, server.port, tmp_path, "worker", *args) as proc:
            publish(broker, *jobs)
            assert handler.stalling.wait(30), (tmp_path / "worker.log").read_text()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        log = (tmp_path / "worker.log").read_text()
        assert code == 0, log
        delivered = [str(m["X-EventPost-Idempotency-Key"]) for m in handler.accepted]
    waiting = keys_in(broker, queue)
    # The job in hand was finished, not dropped; the others went back to the queue.
    assert delivered and delivered[0] == jobs[0].payload["idempotency_key"]
    assert len(delivered) + len(waiting) == len(jobs)
    assert set(delivered) | set(waiting) == all_keys
    assert broker.depth(f"{queue}.parked") == 0
    assert "worker stopped" in log


def test_sigterm_with_several_consumers_finishes_every_send_and_loses_nothing(
    broker: Broker, tmp_path
):
    # The default --concurrency: several emails in flight when SIGTERM comes, one stalled.
    queue = broker.queue_name("email-proc")
    handler = ScriptedHandler(["stall:2"])
    jobs = [email_job() for _ in range(8)]
    all_keys = {job.payload["idempotency_key"] for job in jobs}
    with smtp_server(handler) as server:
        with worker_process(broker, queue, server.port, tmp_path, "worker") as proc:
            publish(broker, *jobs)
            assert handler.stalling.wait(30), (tmp_path / "worker.log").read_text()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        log = (tmp_path / "worker.log").read_text()
        assert code == 0, log
        delivered = [str(m["X-EventPost-Idempotency-Key"]) for m in handler.accepted]
    waiting = keys_in(broker, queue)
    # Every job was either sent once (the stalled one too) or is back in the queue.
    assert delivered
    assert len(delivered) + len(waiting) == len(jobs)
    assert set(delivered) | set(waiting) == all_keys
    assert broker.depth(f"{queue}.parked") == 0
    assert "worker stopped" in log
