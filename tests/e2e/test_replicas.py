"""`invoke run --replicas events=2,notifications=2` through the real launcher: the gateway
spreads GETs over both instances of each (each instance's /metrics shows its share), and an
events instance killed with SIGKILL is restarted by the launcher while the suite keeps
answering."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.launcher import ROOT
from tests.e2e._suite import isolated_vhost, suite_env


class Launcher:
    """``python -m devtools.launcher`` as a child, its output read by a thread."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.launcher", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the launcher's output:\n" + self.output)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _served(instance_url: str, route: str = "/v1/events") -> int:
    """How many ``GET <route>`` an instance has answered (its own /metrics)."""
    text = httpx.get(instance_url + "/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "http_requests_total"
                and labels.get("route") == route
                and labels.get("method") == "GET"
            ):
                total += sample.value
    return int(total)


def _master_pid(launcher_pid: int, port: int) -> int:
    """The pid of the launcher's child that serves ``port`` (the server's main process)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, IndexError, ValueError):
            continue
        if (
            ppid == launcher_pid
            and "--port" in argv[:-1]
            and argv[argv.index("--port") + 1] == str(port)
        ):
            return int(entry.name)
    raise AssertionError(f"no child of {launcher_pid} serves port {port}")


@pytest.mark.slow
def test_replicas_share_the_load_and_a_killed_one_is_restarted(tmp_path):
    with isolated_vhost() as amqp_url:
        env = suite_env(tmp_path, amqp_url)
        launcher = Launcher(env, "--replicas", "events=2,notifications=2")
        try:
            launcher.wait_for(r"Ctrl-C stops it all|could not start", timeout=180)
            assert "EventPost is running" in launcher.output, launcher.output
            ports = {
                name: int(port)
                for name, port in re.findall(
                    r"(events-[12])\s+http://127.0.0.1:(\d+)", launcher.output
                )
            }
            assert sorted(ports) == ["events-1", "events-2"], launcher.output
            urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
            gateway = httpx.Client(base_url=f"http://127.0.0.1:{env['GATEWAY_PORT']}", timeout=15)

            before = {name: _served(url) for name, url in urls.items()}
            statuses = [gateway.get("/v1/events").status_code for _ in range(20)]
            assert statuses == [200] * 20
            share = {name: _served(url) - before[name] for name, url in urls.items()}
            assert sum(share.values()) == 20
            assert share["events-1"] >= 5 and share["events-2"] >= 5, share

            # notifications=2 too: a user's GETs are spread over both of its instances.
            notif = re.findall(r"notifications-[12]\s+(http://127.0.0.1:\d+)", launcher.output)
            assert len(notif) == 2, launcher.output
            user = {"username": f"r{uuid.uuid4().hex[:8]}", "password": "correct horse 1"}
            signed = gateway.post("/v1/users", json={**user, "email": f"{user['username']}@x.test"})
            assert signed.status_code == 201, signed.text
            token = gateway.post("/v1/auth/token", json=user).json()["access_token"]
            mine = {"Authorization": f"Bearer {token}"}
            assert all(
                gateway.get("/v1/notifications", headers=mine).status_code == 200 for _ in range(10)
            )
            assert all(_served(url, "/v1/notifications") >= 3 for url in notif)

            victim = _master_pid(launcher.proc.pid, ports["events-1"])
            os.killpg(victim, signal.SIGKILL)
            errors = []
            answered = 0
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                resp = gateway.get("/v1/events")
                answered += 1
                if resp.status_code != 200:
                    errors.append(resp.status_code)
                if "events-1 restarted" in launcher.output:
                    try:
                        if httpx.get(urls["events-1"] + "/ready", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                time.sleep(0.05)
            assert "events-1 died (exit code -9); restarting it in" in launcher.output
            assert "events-1 restarted" in launcher.output, launcher.output
            assert errors == [], f"{len(errors)} of {answered} requests failed: {errors}"
            assert launcher.proc.poll() is None  # the suite goes on
            log = (tmp_path / "log" / "launcher.log").read_text()
            assert "events-1 died" in log and "events-1 restarted" in log

            # The restarted instance takes its share again, once the gateway's breaker for it
            # lets a trial through (its cooldown runs from the failures the kill caused).
            again = _served(urls["events-1"])
            statuses = []
            deadline = time.monotonic() + 60
            while _served(urls["events-1"]) <= again and time.monotonic() < deadline:
                statuses += [gateway.get("/v1/events").status_code for _ in range(5)]
                time.sleep(0.2)
            assert set(statuses) <= {200}, statuses
            assert _served(urls["events-1"]) > again
            gateway.close()
        finally:
            code = launcher.stop()
        assert code == 0, launcher.output
        assert "Stopped." in launcher.output
