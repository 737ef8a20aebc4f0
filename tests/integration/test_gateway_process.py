"""``python -m gateway`` as a process: JSON log lines on stdout, and SIGTERM lets a request in
flight finish before the process exits."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.http_doubles import FakeServices, call, start_gateway_process


@pytest.fixture
def fakes() -> Iterator[FakeServices]:
    with FakeServices() as services:
        yield services


def start_gateway(fakes: FakeServices, tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    return start_gateway_process(fakes, tmp_path, graceful_timeout=5, LOG_LEVEL="INFO")


def records(log_path: Path) -> list[dict]:
    found = []
    for line in log_path.read_text().splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def test_sigterm_lets_the_request_in_flight_finish(fakes, tmp_path):
    proc, url, log_path = start_gateway(fakes, tmp_path)
    try:
        fakes.events.hang_seconds = 1.0
        answers = []
        slow = threading.Thread(
            target=lambda: answers.append(
                call(url, "GET", "/v1/events/hang", headers={"X-Request-ID": "in-flight-1"})
            )
        )
        slow.start()
        deadline = time.monotonic() + 5
        while not fakes.events.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fakes.events.seen, "the request did not reach the upstream"
        proc.send_signal(signal.SIGTERM)
        slow.join(10)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (answer,) = answers
    assert answer.status == 200
    assert answer.headers["X-Request-ID"] == "in-flight-1"

    logged = records(log_path)
    line = next(r for r in logged if r.get("request_id") == "in-flight-1")
    assert line["service"] == "gateway"
    assert (line["method"], line["path"], line["status"], line["upstream"]) == (
        "GET",
        "/v1/events/hang",
        200,
        "events",
    )
    assert line["duration_ms"] >= 1000 * 0.9
    assert any(r.get("message") == "gateway stopped" for r in logged)
