"""What the Consul tests share: a double per test, settings pointing at it, waiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from devtools.consul_double import ConsulDouble
from devtools.launcher import free_port, http_status
from eventpost.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

#: Check and resync timings that make a test take a second or two instead of the production
#: tens of seconds (the same code paths, shorter intervals).
FAST = {
    "CONSUL_CHECK_INTERVAL": "0.2",
    "CONSUL_CHECK_TIMEOUT": "1",
    "CONSUL_DEREGISTER_AFTER": "30",
    "CONSUL_RESYNC_INTERVAL": "0.2",
    "CONSUL_WAIT": "2",
}


def consul_settings(consul: ConsulDouble, service: str = "eventpost", **changes: Any) -> Settings:
    """Settings of ``service`` on the double with the fast timings (``changes`` on top)."""
    env = {**FAST, "CONSUL_HTTP_ADDR": consul.url}
    if consul.token:
        env["CONSUL_HTTP_TOKEN"] = consul.token
    return Settings.from_env(service, env).with_(**changes)


def until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy (its value is returned) or fail after ``timeout``
    (a bound for a hung test, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def process_env(consul: ConsulDouble, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a suite process on the double, with its own DATA_DIR."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env.update(FAST)
    env.update(
        {
            "CONSUL_HTTP_ADDR": consul.url,
            "DATA_DIR": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


class Proc:
    """A suite process started as the launcher starts it (own session, log file)."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def signal(self, sig: signal.Signals) -> None:
        os.killpg(self.process.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL what is left; returns the exit code."""
        if self.process.poll() is None:
            try:
                self.signal(signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.process.wait(timeout)

    def records(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def served(service: str, port: int) -> list[str]:
    """The launcher's command line that serves ``service`` on ``port``."""
    from devtools.launcher import service_command

    return service_command(service, port)


def start_http(
    name: str, argv: list[str], port: int, env: Mapping[str, str], log_dir: Path
) -> Proc:
    """Start an HTTP part and wait until its /health answers."""
    proc = Proc(name, argv, env, log_dir)
    try:
        until(
            lambda: (
                proc.process.poll() is not None
                or http_status(f"http://127.0.0.1:{port}/health") == 200
            ),
            30,
            f"{name} to answer /health",
        )
    except AssertionError:
        proc.stop()
        raise
    if proc.process.poll() is not None:
        raise AssertionError(f"{name} exited:\n{proc.log_text()}")
    return proc


def start_service(
    service: str, consul: ConsulDouble, tmp_path: Path, *, name: str | None = None, **extra: str
) -> tuple[Proc, int]:
    """A real instance of ``service`` (granian) registered in the double; (proc, port)."""
    port = free_port()
    env = process_env(consul, tmp_path, **extra)
    return start_http(name or service, served(service, port), port, env, tmp_path), port


def start_gateway(consul: ConsulDouble, tmp_path: Path, **extra: str) -> tuple[Proc, int]:
    """A real ``python -m gateway`` registered in the double; (proc, port)."""
    port = free_port()
    env = process_env(consul, tmp_path, GATEWAY_PORT=str(port), **extra)
    argv = [sys.executable, "-m", "gateway", "--graceful-timeout", "2"]
    return start_http("gateway", argv, port, env, tmp_path), port
