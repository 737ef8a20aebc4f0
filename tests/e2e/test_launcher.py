"""`invoke run`'s launcher: it starts every part, says where they are, and SIGTERM or Ctrl-C
stops all of them with nothing left running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devtools.launcher import ROOT, Suite, SuiteError
from tests.e2e._suite import isolated_vhost, suite_env


def _processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process (Linux /proc)."""
    rows = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        rows.append((int(entry.name), int(fields[1]), int(fields[2])))
    return rows


def _descendants(pid: int) -> set[int]:
    """The launcher's children and every process in their groups (e.g. servers' workers)."""
    rows = _processes()
    children = {p for p, ppid, _ in rows if ppid == pid}
    return children | {p for p, _, group in rows if group in children}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_launcher_starts_everything_and_stops_everything(tmp_path, sig):
    with isolated_vhost() as amqp_url:
        _start_and_stop(suite_env(tmp_path, amqp_url), tmp_path, sig)


def _start_and_stop(env: dict[str, str], tmp_path: Path, sig: signal.Signals) -> None:
    gateway_port = int(env["GATEWAY_PORT"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.launcher"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops it all" in line or "could not start" in line:
                break
        output = "".join(lines)
        assert "EventPost is running" in output, output
        for part in (
            "gateway",
            "users",
            "events",
            "notifications",
            "email-sender",
            "dispatcher",
            "smtp-sink",
        ):
            assert part in output
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/ready", timeout=5) as r:
            assert r.status == 200
        children = _descendants(proc.pid)
        assert len(children) >= 9
        assert (tmp_path / "log" / "gateway.log").exists()
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
        assert "Stopped." in rest
        assert proc.returncode == 0
        deadline = time.monotonic() + 5
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in children if _alive(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_taken_port_stops_the_suite_before_anything_starts(tmp_path):
    env = suite_env(tmp_path, "amqp://guest:guest@127.0.0.1:5672/%2F")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as granian listens
        taken.bind(("127.0.0.1", int(env["EVENTS_PORT"])))
        taken.listen()
        suite = Suite(env, with_smtp_sink=False)
        with pytest.raises(SuiteError, match=f"events on {env['EVENTS_PORT']}"):
            suite.start()
    assert not list(tmp_path.glob("*.sqlite3"))
