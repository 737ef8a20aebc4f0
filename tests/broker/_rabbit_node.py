"""Private RabbitMQ nodes for the broker-fault tests: their own node name, AMQP port,
distribution port, data and log directories, so a test may stop, restart and kill them
without touching the machine's broker (the shared one on 5672).

A node is started with ``rabbitmq-server`` (as the ``rabbitmq`` user when we are root, so it
shares the Erlang cookie in that user's home with ``rabbitmqctl``, which clustering needs)
and a config file of its own: /etc/rabbitmq/rabbitmq.conf pins the listener to 5672, and the
environment cannot override a listener the config file sets.

    with private_nodes(3) as nodes:      # a three-node cluster
        url = ",".join(node.url for node in nodes)
        nodes[1].kill()
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pika
import pika.exceptions

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
RABBIT_USER = "rabbitmq"
#: Bounds against hangs (a node comes up in ~13 s on the shared 2-core machine).
START_TIMEOUT = 120.0
CTL_TIMEOUT = 120.0


#: Where the nodes' ports are taken from: below the kernel's ephemeral range (32768-60999 on
#: Debian), so no outgoing connection and no ``bind(0)`` server of another test can take a
#: node's port between the moment it is chosen and the moment the node listens (it happened:
#: ``eaddrinuse`` at boot), nor while a stopped node waits to be started on it again.
PORT_RANGE = (20000, 32000)
_taken: set[int] = set()
_taken_lock = threading.Lock()


def free_port() -> int:
    """A TCP port below the ephemeral range that nobody listens on now and that no other node
    of this process was given."""
    with _taken_lock:
        for _ in range(1000):
            port = random.randint(*PORT_RANGE)
            if port in _taken:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _taken.add(port)
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


def _as_rabbit_user() -> list[str]:
    """The prefix that runs a command as the rabbitmq user (none when we are not root)."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", RABBIT_USER, "--"]


def _rabbit_home() -> str:
    if os.geteuid() != 0:
        return os.environ.get("HOME", str(Path.home()))
    return pwd.getpwnam(RABBIT_USER).pw_dir


def ctl(node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``rabbitmqctl -n NODE ARGS`` (bounded by :data:`CTL_TIMEOUT`)."""
    return subprocess.run(
        [CTL, "-q", "-n", node, *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=CTL_TIMEOUT,
    )


class RabbitNode:
    """One private RabbitMQ node under ``base`` (a directory this node owns)."""

    def __init__(self, base: Path, *, name: str | None = None) -> None:
        self.base = base
        self.short = name or f"eptest-{uuid.uuid4().hex[:8]}"
        self.node = f"{self.short}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._prepare()

    @property
    def url(self) -> str:
        """Its AMQP URL (guest may log in over loopback)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def boot(self, attempts: int = 3) -> None:
        """First start: like :meth:`start`, but a node that cannot listen because its ports
        were taken meanwhile (``eaddrinuse``) is given new ones and started again."""
        for attempt in range(attempts):
            try:
                self.start()
                return
            except RuntimeError:
                if "eaddrinuse" not in self.output() or attempt == attempts - 1:
                    raise
            self.port, self.dist_port = free_port(), free_port()
            (self.base / "server.out").unlink(missing_ok=True)
            self._prepare()

    def _prepare(self) -> None:
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            # No disk alarm on a nearly full shared /tmp.
            "disk_free_limit.absolute = 1MB\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        if os.geteuid() == 0:
            info = pwd.getpwnam(RABBIT_USER)
            for path in [self.base, *self.base.rglob("*")]:
                os.chown(path, info.pw_uid, info.pw_gid)

    def _env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": _rabbit_home(),
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self, *, wait: bool = True) -> RabbitNode:
        """Start the node (its data survives a stop); with ``wait``, return once it takes
        AMQP connections."""
        if self.running:
            return self
        out = open(self.base / "server.out", "ab")  # noqa: SIM115 (kept for the process)
        self.process = subprocess.Popen(
            [*_as_rabbit_user(), str(SERVER)],
            env=self._env(),
            cwd=self.base,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: kill() takes the whole tree
        )
        out.close()
        if wait:
            self.wait_until_up()
        return self

    @property
    def running(self) -> bool:
        """Whether its server process is alive."""
        return self.process is not None and self.process.poll() is None

    def accepts_connections(self) -> bool:
        """Whether an AMQP connection to it opens now."""
        params = pika.URLParameters(self.url)
        params.socket_timeout = params.stack_timeout = 2.0
        params.connection_attempts = 1
        try:
            pika.BlockingConnection(params).close()
        except (pika.exceptions.AMQPError, OSError):
            return False
        return True

    def wait_until_up(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the node accepts AMQP connections."""
        deadline = time.monotonic() + timeout
        while not self.accepts_connections():
            if not self.running:
                raise RuntimeError(f"{self.node} exited while starting:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.node} did not come up:\n{self.output()}")
            time.sleep(0.25)

    def output(self) -> str:
        """The tail of what the server printed."""
        path = self.base / "server.out"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl`` against this node."""
        return ctl(self.node, *args, check=check)

    def stop(self) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``); its data stays for a restart."""
        if not self.running:
            return
        self.ctl("stop", check=False)
        assert self.process is not None
        try:
            self.process.wait(timeout=CTL_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Kill the node at once (SIGKILL to its whole process group), like a crash."""
        if not self.running:
            return
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def join(self, seed: RabbitNode, attempts: int = 5) -> None:
        """Make this (running, empty) node a member of ``seed``'s cluster.

        ``join_cluster`` answers 69 (unavailable) while the seed is still settling, and
        ``start_app`` after it can fail with Mnesia not starting (both seen on a loaded
        machine): the node is then reset, as it was before, and joins again."""
        for attempt in range(attempts):
            try:
                self.ctl("stop_app")
                self.ctl("join_cluster", seed.node)
                self.ctl("start_app")
                self.wait_until_up()
                return
            except subprocess.CalledProcessError:
                if attempt == attempts - 1:
                    raise
            self.ctl("stop_app", check=False)
            self.ctl("reset", check=False)
            time.sleep(2)


@contextlib.contextmanager
def private_nodes(count: int = 1) -> Iterator[list[RabbitNode]]:
    """``count`` private nodes, clustered when more than one (all of them running); every
    node is stopped and its directory removed on the way out."""
    root = Path(tempfile.mkdtemp(prefix="eventpost-rabbit-"))
    os.chmod(root, 0o755)  # the rabbitmq user must reach its node's directory
    nodes = [RabbitNode(root / f"n{i}") for i in range(count)]
    try:
        _each(nodes, RabbitNode.boot)
        # One at a time, as RabbitMQ's clustering guide does it: two nodes joining at once
        # raced in Mnesia (start_app failed after join_cluster on a loaded machine).
        for node in nodes[1:]:
            node.join(nodes[0])
        yield nodes
    finally:
        _each(nodes, _stop_for_good)
        shutil.rmtree(root, ignore_errors=True)


def _stop_for_good(node: RabbitNode) -> None:
    try:
        node.stop()
    finally:
        node.kill()


def _each(nodes: list[RabbitNode], work: Callable[[RabbitNode], object]) -> None:
    """``work(node)`` for every node at the same time; the first error is raised."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        for future in [pool.submit(work, node) for node in nodes]:
            future.result()
