"""``python -m gateway`` as a process: JSON log lines on stdout, and SIGTERM lets a request in
flight finish before the process exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.http_doubles import FakeServices, call, closed_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fakes() -> Iterator[FakeServices]:
    with FakeServices() as services:
        yield services


def start_gateway(fakes: FakeServices, tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    port = closed_port()
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        **{f"{name.upper()}_PORT": str(p) for name, p in fakes.ports().items()},
        "DATA_DIR": str(tmp_path),
        "LOG_LEVEL": "INFO",
    }
    env.pop("CONSUL_HTTP_ADDR", None)
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--graceful-timeout", "5"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(log_path.read_text()) from None
            time.sleep(0.05)
    return proc, url, log_path


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
