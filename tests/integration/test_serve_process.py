"""``python -m eventpost.serve`` as a process: SIGTERM while a request is half received lets
that request finish (201) and the server exit 0; its own log lines are JSON."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid

import pytest

from devtools.launcher import free_port, http_status
from eventpost.serve import server_command
from tests.integration.consul_helpers import until

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("whom", ["main process", "process group"])
def test_sigterm_finishes_the_request_in_flight_and_exits_0(tmp_path, whom):
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path), "LOG_LEVEL": "INFO"}
    env.pop("CONSUL_HTTP_ADDR", None)
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        server_command("users", "127.0.0.1", port),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        until(lambda: http_status(f"http://127.0.0.1:{port}/ready") == 200, 30, "users ready")
        name = f"s{uuid.uuid4().hex[:10]}"
        body = json.dumps(
            {"username": name, "email": f"{name}@example.test", "password": "correct horse 1"}
        ).encode()
        head = (
            "POST /v1/users HTTP/1.1\r\nHost: eventpost\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(head + body[:10])
            time.sleep(0.5)  # the request is being read
            if whom == "main process":
                os.kill(proc.pid, signal.SIGTERM)
            else:  # what the launcher sends
                os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(1.0)
            conn.sendall(body[10:])
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 201 Created", answer[:300]
        assert proc.wait(30) == 0
        assert http_status(f"http://127.0.0.1:{port}/health") is None  # nothing listens
        log.close()
        lines = (tmp_path / "server.log").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        assert any(r.get("message") == "POST /v1/users 201" for r in records)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_a_port_something_listens_on_is_refused_not_shared(tmp_path):
    # granian binds with SO_REUSEPORT: without the check a second server on the port would
    # take a share of the first one's connections (as another granian would let it).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DATA_DIR": str(tmp_path)}
        env.pop("CONSUL_HTTP_ADDR", None)
        done = subprocess.run(
            server_command("events", "127.0.0.1", port),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"something already listens on 127.0.0.1:{port}" in done.stdout
    assert not list(tmp_path.glob("*.sqlite3"))  # it stopped before opening its store
