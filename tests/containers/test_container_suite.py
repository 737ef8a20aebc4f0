"""The suite in real containers built from the repository's Dockerfiles (podman), through
containers/podman-suite.sh: the debootstrap base image (cached under /var/tmp/eventpost-base),
every image, every part started on the host's network with the host's RabbitMQ (a virtual host
of its own), the embedded store in a volume and an SMTP sink on the host. Then: /ready, a
sign-up through the containerised gateway until the welcome email arrives, the request id in
the parts' logs, images without tests, dev tooling or .git, non-root processes, health checks,
Heroku's release command, `podman stop` finishing a request in flight with exit code 0, and
every worker exiting 0 on `podman stop`.

Skipped, with the reason, where podman cannot run containers (not root, no podman, no runc
settings that work, no RabbitMQ). The first run downloads Debian (about 1-2 minutes here) and
builds every image (about 2 minutes); later runs reuse both.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.consul_double import ConsulDouble
from devtools.launcher import free_port
from devtools.smtp_sink import Mailbox
from tests.containers._files import HTTP_IMAGES, IMAGES, ROOT, yaml_file
from tests.e2e._suite import isolated_vhost, json_records

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1200)]

SCRIPT = ROOT / "containers" / "podman-suite.sh"
CONF = ROOT / "containers" / "podman" / "containers.conf"
BASE_IMAGE = "docker.io/library/python:3.11-slim-bookworm"
#: What no image may hold: test and dev code, the repository's history, dev-only packages.
FORBIDDEN_APP = ("tests", "devtools", "perf", "tasks", ".git", "docs", "var", ".venv")
FORBIDDEN_PACKAGES = ("pytest", "ruff", "mongomock", "httpx", "invoke", "aiosmtpd", "pip")
#: Each HTTP part's port variable in the suite's environment.
PORT_VARIABLES = {
    "users": "USERS_PORT",
    "events": "EVENTS_PORT",
    "notifications": "NOTIFICATIONS_PORT",
    "gateway": "GATEWAY_PORT",
}


def _podman_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(CONF))
    return env


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_podman_env(),
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {result.stderr[-2000:]}")
    return result.stdout


def _why_podman_cannot_run() -> str | None:
    if sys.platform != "linux":
        return "podman containers need Linux"
    if os.geteuid() != 0:
        return "podman here runs as root only (rootless needs subuid ranges this sandbox lacks)"
    if shutil.which("podman") is None:
        return "podman is not installed (Debian: apt-get install podman)"
    if shutil.which("runc") is None:
        return "runc is not installed (containers/podman/containers.conf names it)"
    exists = subprocess.run(
        ["podman", "image", "exists", BASE_IMAGE], env=_podman_env(), capture_output=True
    )
    if exists.returncode != 0 and shutil.which("debootstrap") is None:
        return f"{BASE_IMAGE} is missing and debootstrap is not installed to build it"
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            pass
    except OSError:
        return "no RabbitMQ at 127.0.0.1:5672"
    return None


@dataclass
class ContainerSuite:
    """The running containers: ports, names, the mailbox of the host's SMTP sink."""

    prefix: str
    env: dict[str, str]
    mailbox: Mailbox
    client: httpx.Client
    consul: ConsulDouble

    def url(self, part: str) -> str:
        return f"http://127.0.0.1:{self.env[PORT_VARIABLES[part]]}"

    def container(self, part: str) -> str:
        return f"{self.prefix}-{part}"

    def logs(self, part: str) -> list[dict]:
        out = subprocess.run(
            ["podman", "logs", self.container(part)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_podman_env(),
        )
        return json_records((out.stdout + out.stderr).splitlines())


def _start_sink(port: int, directory: Path) -> subprocess.Popen[bytes]:
    sink = subprocess.Popen(
        [sys.executable, "-m", "devtools.smtp_sink", "--port", str(port), "--dir", str(directory)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return sink
        except OSError:
            time.sleep(0.2)
    sink.kill()
    raise AssertionError("the SMTP sink did not start")


def _script(command: str, env: dict[str, str], timeout: float) -> None:
    result = subprocess.run(
        [str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"podman-suite.sh {command} failed:\n{result.stderr[-4000:]}")
    sys.stderr.write(result.stderr)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContainerSuite]:
    reason = _why_podman_cannot_run()
    if reason:
        pytest.skip(reason)
    mail_dir = tmp_path_factory.mktemp("mail")
    smtp_port = free_port()
    # Not eventpost-ct-*: that is what `invoke stopContainers` removes.
    prefix = f"eventpost-test-{uuid.uuid4().hex[:8]}"
    # The parts register with a Consul agent (the HTTP double of its documented API, on the
    # host: the containers share the host's network) and the gateway finds the services there.
    with isolated_vhost() as amqp_url, ConsulDouble(reap_interval=0.2) as consul:
        env = _podman_env() | {
            "CONSUL_HTTP_ADDR": consul.url,
            "SERVICE_ADDRESS": "127.0.0.1",
            "CONSUL_CHECK_INTERVAL": "1",
            "CONSUL_RESYNC_INTERVAL": "2",
            "CONSUL_WAIT": "5",
            "EVENTPOST_CT_PREFIX": prefix,
            "AMQP_URL": amqp_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp_port),
            "GATEWAY_PORT": str(free_port()),
            "USERS_PORT": str(free_port()),
            "EVENTS_PORT": str(free_port()),
            "NOTIFICATIONS_PORT": str(free_port()),
            "RETRY_DELAYS": "0.5,1,2",
            "DISPATCH_INTERVAL": "0.5",
            "GATEWAY_RATE_LIMIT": "1000",
            "GATEWAY_RATE_BURST": "2000",
        }
        _script("build", env, timeout=900)
        sink = _start_sink(smtp_port, mail_dir)
        client = httpx.Client(base_url=f"http://127.0.0.1:{env['GATEWAY_PORT']}", timeout=30)
        try:
            _script("up", env, timeout=300)
            yield ContainerSuite(prefix, env, Mailbox(mail_dir), client, consul)
        finally:
            client.close()
            subprocess.run(
                [str(SCRIPT), "down"], env=env, capture_output=True, timeout=300, check=False
            )
            sink.terminate()
            sink.wait(timeout=30)


@pytest.fixture(scope="module")
def signed_up(suite: ContainerSuite) -> dict:
    username = f"c{uuid.uuid4().hex[:10]}"
    email = f"{username}@example.test"
    resp = suite.client.post(
        "/v1/users", json={"username": username, "email": email, "password": "correct horse 1"}
    )
    assert resp.status_code == 201, resp.text
    return {"email": email, "request_id": resp.headers["X-Request-ID"]}


def test_every_http_part_answers_ready(suite: ContainerSuite) -> None:
    for part in HTTP_IMAGES:
        resp = httpx.get(suite.url(part) + "/ready", timeout=10)
        assert resp.status_code == 200, (part, resp.text)


HTTP_PARTS = ("gateway", "users", "events", "notifications")
WORKERS = ("users-relay", "events-relay", "notifications-worker", "dispatcher", "email-sender")


def test_every_part_registers_in_consul_and_the_http_parts_pass_their_checks(
    suite: ContainerSuite,
) -> None:
    deadline = time.monotonic() + 60
    expected = {part: [f"127.0.0.1:{suite.env[PORT_VARIABLES[part]]}"] for part in HTTP_PARTS}
    while time.monotonic() < deadline:
        passing = {part: suite.consul.passing(part) for part in HTTP_PARTS}
        if passing == expected and all(suite.consul.service_ids(w) for w in WORKERS):
            break
        time.sleep(0.5)
    assert passing == expected
    for worker in WORKERS:
        assert len(suite.consul.service_ids(worker)) == 1, worker
    bodies = {b["Name"]: b for b in suite.consul.registrations}
    assert bodies["events"]["Check"]["HTTP"] == f"http://{expected['events'][0]}/health"


def test_a_sign_up_through_the_gateway_brings_the_welcome_email(
    suite: ContainerSuite, signed_up: dict
) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        to = [m for m in suite.mailbox.messages() if signed_up["email"] in (m["To"] or "")]
        if to:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no welcome email to {signed_up['email']} within 90 s")
    (message,) = to
    assert "welcome" in (message["Subject"] or "").lower()


def test_the_request_id_travels_through_the_containers(
    suite: ContainerSuite, signed_up: dict
) -> None:
    """The sign-up's id is in the gateway's, the users service's and the email-sender's JSON
    lines (the welcome email test above waited for the last of them)."""
    request_id = signed_up["request_id"]
    for part in ("gateway", "users", "email-sender"):
        ids = {record.get("request_id") for record in suite.logs(part)}
        assert request_id in ids, part


@pytest.mark.parametrize("name", IMAGES)
def test_images_hold_only_the_deployable_and_run_as_non_root(
    suite: ContainerSuite, name: str
) -> None:
    image = f"localhost/eventpost/{name}:latest"
    config = json.loads(podman("image", "inspect", image))[0]["Config"]
    assert config["User"] == "10001:10001"
    root = Path(podman("image", "mount", image).strip())
    try:
        app = {p.name for p in (root / "app").iterdir()}
        assert not app & set(FORBIDDEN_APP), app
        assert not (root / ".git").exists()
        site = next((root / "opt" / "venv" / "lib").glob("python3.11/site-packages"))
        installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
        assert not installed & set(FORBIDDEN_PACKAGES), installed & set(FORBIDDEN_PACKAGES)
        assert {"falcon", "pika", "pymongo"} <= installed
        stray = [
            p.relative_to(root)
            for p in (root / "app").rglob("*")
            if p.name in ("conftest.py", "pyproject.toml") or p.name.startswith("test_")
        ]
        assert stray == []
    finally:
        podman("image", "unmount", image, check=False)


def test_every_process_of_every_part_runs_as_non_root(suite: ContainerSuite) -> None:
    parts = [
        "users",
        "events",
        "notifications",
        "users-relay",
        "events-relay",
        "notifications-worker",
        "dispatcher",
        "email-sender",
        "gateway",
    ]
    for part in parts:
        pid = int(podman("inspect", "-f", "{{.State.Pid}}", suite.container(part)).strip())
        assert pid > 0, f"{part} is not running"
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:4]
        assert uids == ["10001"] * 4, part


def test_the_image_health_checks_pass(suite: ContainerSuite) -> None:
    for part in HTTP_IMAGES:
        podman("healthcheck", "run", suite.container(part), timeout=60)


def test_image_sizes_are_recorded(suite: ContainerSuite) -> None:
    sizes = {
        name: int(podman("image", "inspect", "-f", "{{.Size}}", f"localhost/eventpost/{name}"))
        for name in IMAGES
    }
    sys.stderr.write(
        "image sizes: " + ", ".join(f"{n} {s / 1e6:.0f} MB" for n, s in sizes.items()) + "\n"
    )
    assert all(0 < size < 400e6 for size in sizes.values()), sizes


def test_heroku_release_command_refuses_a_dyno_without_mongodb(suite: ContainerSuite) -> None:
    """heroku.yml's release command runs in the events image and stops a release that would
    keep its data in the dyno's files."""
    (command,) = yaml_file("heroku.yml")["release"]["command"]
    name = f"{suite.prefix}-release"
    podman("run", "-d", "--name", name, "--network", "none",
           "localhost/eventpost/events:latest", *shlex.split(command))  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while podman("inspect", "-f", "{{.State.Status}}", name).strip() != "exited":
            assert time.monotonic() < deadline, "the release command did not finish"
            time.sleep(0.5)
        assert podman("inspect", "-f", "{{.State.ExitCode}}", name).strip() == "1"
        logs = subprocess.run(
            ["podman", "logs", name], capture_output=True, text=True, env=_podman_env()
        )
        assert "MONGODB_URL is not set" in logs.stdout + logs.stderr
    finally:
        podman("rm", "-f", name, check=False)


def _slow_sign_up(port: int) -> tuple[socket.socket, bytes]:
    """A sign-up whose body is only half sent: a request in flight."""
    name = f"s{uuid.uuid4().hex[:10]}"
    body = json.dumps(
        {"username": name, "email": f"{name}@example.test", "password": "correct horse 1"}
    ).encode()
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        "POST /v1/users HTTP/1.1\r\nHost: eventpost\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    conn.sendall(head + body[:10])
    return conn, body[10:]


@pytest.mark.parametrize("part", ["gateway", "users"])
def test_podman_stop_finishes_the_request_in_flight_and_exits_0(
    suite: ContainerSuite, part: str
) -> None:
    """Last: stops the part. SIGTERM while a request is half received; the rest of it comes
    a second later, its answer must still be a 201, and the container exits 0 by itself
    within the 15 s grace period (killed at its end, it would show exit code 137)."""
    port = int(suite.env[PORT_VARIABLES[part]])
    conn, rest = _slow_sign_up(port)
    time.sleep(0.5)  # the request is being read
    started = time.monotonic()
    stop = subprocess.Popen(
        ["podman", "stop", "-t", "15", suite.container(part)],
        env=_podman_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.5)
    conn.sendall(rest)
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    conn.close()
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 201 Created", answer[:300]
    stop.wait(timeout=60)
    elapsed = time.monotonic() - started
    state = podman("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", suite.container(part))
    assert state.split() == ["exited", "0"]
    assert suite.consul.service_ids(part) == [], f"{part} still registered in Consul"
    sys.stderr.write(f"{part} stopped in {elapsed:.1f} s\n")


@pytest.mark.parametrize(
    "part",
    ["users-relay", "events-relay", "notifications-worker", "dispatcher", "email-sender"],
)
def test_podman_stop_of_a_worker_exits_0(suite: ContainerSuite, part: str) -> None:
    """Last too: a worker as PID 1 handles SIGTERM itself (no init in the image), finishes
    what it has in hand and exits 0, not killed at the end of the grace period (137)."""
    assert suite.consul.service_ids(part), f"{part} was not registered in Consul"
    podman("stop", "-t", "15", suite.container(part), timeout=60)
    state = podman("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", suite.container(part))
    assert state.split() == ["exited", "0"]
    assert suite.consul.service_ids(part) == [], f"{part} still registered in Consul"
