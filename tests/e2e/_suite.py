"""Running the whole suite for end-to-end tests: free ports, its own data directory and its own
RabbitMQ virtual host, talked to through the gateway only (``RunningSuite.client``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devtools.launcher import ROOT, Suite, free_ports


def json_records(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON objects among log lines (other lines skipped)."""
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@dataclass
class RunningSuite:
    """What e2e tests get: the gateway's URL, an HTTP client on it, the dev mailbox, the
    data directory and the environment the parts run with."""

    url: str
    data_dir: Path
    env: dict[str, str]
    client: httpx.Client
    launcher: Suite

    @property
    def mailbox(self) -> Any:
        """The SMTP sink's stored messages (devtools.smtp_sink.Mailbox)."""
        from devtools.smtp_sink import Mailbox

        return Mailbox(self.data_dir / "mail")

    def logs(self, part: str) -> list[dict[str, Any]]:
        """The JSON records of a part's log (lines that are not JSON are skipped)."""
        path = self.data_dir / "log" / f"{part}.log"
        return json_records(path.read_text(errors="replace").splitlines())

    def create_admin(self, username: str, email: str, password: str | None = None) -> None:
        """``invoke create-admin`` against the running suite's store."""
        argv = [
            str(Path(sys.executable).parent / "invoke"),
            "create-admin",
            "--username",
            username,
            "--email",
            email,
        ]
        if password:
            argv += ["--password", password]
        subprocess.run(argv, cwd=ROOT, env=self.env, check=True, capture_output=True, timeout=60)

    def sign_up(self, username: str | None = None, password: str = "correct horse 1") -> dict:
        """A new account (through the gateway); returns {username, email, password, user}."""
        username = username or f"u{uuid.uuid4().hex[:10]}"
        email = f"{username}@example.test"
        resp = self.client.post(
            "/v1/users", json={"username": username, "email": email, "password": password}
        )
        assert resp.status_code == 201, resp.text
        return {"username": username, "email": email, "password": password, "user": resp.json()}

    def login(self, username: str, password: str) -> str:
        """An access token for the account."""
        resp = self.client.post("/v1/auth/token", json={"username": username, "password": password})
        assert resp.status_code == 200, resp.text
        return resp.json()["access_token"]

    def admin_token(self) -> str:
        """A token of a (once created) admin account."""
        name = "e2e_admin"
        self.create_admin(name, "e2e-admin@example.test", "admin password 1")
        return self.login(name, "admin password 1")


@contextmanager
def isolated_vhost() -> Iterator[str]:
    """The AMQP URL of a RabbitMQ virtual host of its own, deleted afterwards, so two suites
    running at once (the session's and the launcher test's) never consume each other's
    messages. Without rabbitmqctl (a remote broker), the configured AMQP_URL is used."""
    base = os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/%2F"
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        yield base
        return
    vhost = f"eventpost-e2e-{uuid.uuid4().hex[:12]}"
    subprocess.run([ctl, "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    subprocess.run(
        [ctl, "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield base.rsplit("/", 1)[0] + "/" + vhost
    finally:
        subprocess.run([ctl, "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


def suite_env(data_dir: Path, amqp_url: str) -> dict[str, str]:
    """The environment of a suite on free ports with its own data directory and vhost."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_HOST", "PYTEST_"))}
    gateway, users, events, notifications, smtp = free_ports(5)
    env.update(
        {
            "AMQP_URL": amqp_url,
            "DATA_DIR": str(data_dir),
            "GATEWAY_PORT": str(gateway),
            "USERS_PORT": str(users),
            "EVENTS_PORT": str(events),
            "NOTIFICATIONS_PORT": str(notifications),
            "SMTP_PORT": str(smtp),
            "RETRY_DELAYS": "0.5,1,2",
            "DISPATCH_INTERVAL": "0.2",
            # The suite's own clients in tests send many requests from one address.
            "GATEWAY_RATE_LIMIT": env.get("GATEWAY_RATE_LIMIT", "1000"),
            "GATEWAY_RATE_BURST": env.get("GATEWAY_RATE_BURST", "2000"),
        }
    )
    return env


def run_suite(env: dict[str, str]) -> Iterator[RunningSuite]:
    data_dir = Path(env["DATA_DIR"])
    launcher = Suite(env, with_smtp_sink=True, say=lambda line: None)
    launcher.start(ready_timeout=120)
    url = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    client = httpx.Client(base_url=url, timeout=15)
    try:
        yield RunningSuite(url=url, data_dir=data_dir, env=env, client=client, launcher=launcher)
    finally:
        client.close()
        launcher.stop()
