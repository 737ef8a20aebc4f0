"""Runs the whole EventPost suite on one machine: what ``invoke run`` and the end-to-end tests
start.

Every part is a child process in its own process group, its output kept in
``DATA_DIR/log/<part>.log``. The launcher waits until each HTTP part answers ``/ready``, prints
the addresses, watches the children, and on Ctrl-C or SIGTERM stops all of them (SIGTERM, then
SIGKILL after a grace period), so nothing is left running.

``--replicas events=2,notifications=2`` starts that many instances of an HTTP service (the
first on its ``*_PORT``, the others on free ports) and hands every part their addresses as
``<SERVICE>_INSTANCES``, which static discovery reads. A part that dies is started again with
backoff (:mod:`devtools.supervisor`), said on the output and in ``DATA_DIR/log/launcher.log``;
only one that keeps dying stops the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devtools.supervisor import GiveUp, RestartPolicy, Supervisor
from eventpost.serve import port_in_use, server_command
from eventpost.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Part:
    """One process of the suite."""

    name: str
    argv: list[str]
    module: str  # checked importable before anything starts, for a plain error
    port: int | None = None  # HTTP parts answer /ready on it
    env: dict[str, str] = field(default_factory=dict)  # this part's own variables
    service: str | None = None  # the HTTP service it is an instance of
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.port else None


def service_command(service: str, port: int) -> list[str]:
    """How the suite serves an HTTP service (granian, one process; its threads per
    :func:`eventpost.serve.default_threads`)."""
    return server_command(service, "127.0.0.1", port)


HTTP_SERVICES = ("gateway", "users", "events", "notifications")


def parse_replicas(spec: str | None) -> dict[str, int]:
    """``"events=2,notifications=2"`` as ``{"events": 2, "notifications": 2}``; raises
    ValueError with a plain message for anything else."""
    replicas: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in (spec or "").split(","))):
        name, sep, count = item.partition("=")
        name = name.strip()
        if not sep or name not in HTTP_SERVICES:
            raise ValueError(
                f"--replicas: {item!r} is not SERVICE=COUNT with SERVICE one of "
                + ", ".join(HTTP_SERVICES)
            )
        try:
            replicas[name] = int(count)
        except ValueError:
            raise ValueError(f"--replicas: {name}'s count {count!r} is not a number") from None
        if not 1 <= replicas[name] <= 16:
            raise ValueError(f"--replicas: {name}'s count must be between 1 and 16")
    return replicas


def _instances(service: str, count: int, port: int) -> list[tuple[str, int]]:
    """(part name, port) of each instance: the first on ``port``, the others on free ports."""
    if count <= 1:
        return [(service, port)]
    others = [p for p in free_ports(count) if p != port][: count - 1]
    ports = [port, *others]
    return [(f"{service}-{i}", p) for i, p in enumerate(ports, start=1)]


def suite_parts(
    settings: Settings, with_smtp_sink: bool, replicas: Mapping[str, int] | None = None
) -> list[Part]:
    """The processes of the whole suite, in start order (``replicas``: instances per HTTP
    service, 1 unless given)."""
    py = sys.executable
    ports = settings.service_ports
    replicas = replicas or {}
    parts = []
    if with_smtp_sink:
        parts.append(Part("smtp-sink", [py, "-m", "devtools.smtp_sink"], "devtools.smtp_sink"))
    for service in ("users", "events", "notifications"):
        for name, port in _instances(service, replicas.get(service, 1), ports[service]):
            parts.append(
                Part(
                    name,
                    service_command(service, port),
                    f"services.{service}.wsgi",
                    port,
                    env={f"{service.upper()}_PORT": str(port)},
                    service=service,
                )
            )
    parts += [
        Part(
            "users-relay",
            [py, "-m", "eventpost.messaging.relay", "--service", "users"],
            "eventpost.messaging.relay",
        ),
        Part(
            "events-relay",
            [py, "-m", "eventpost.messaging.relay", "--service", "events"],
            "eventpost.messaging.relay",
        ),
        Part(
            "notifications-worker",
            [py, "-m", "services.notifications.worker"],
            "services.notifications.worker",
        ),
        Part(
            "dispatcher",
            [py, "-m", "services.notifications.dispatcher"],
            "services.notifications.dispatcher",
        ),
        Part("email-sender", [py, "-m", "email_sender"], "email_sender.__main__"),
    ]
    for name, port in _instances("gateway", replicas.get("gateway", 1), settings.gateway_port):
        parts.append(
            Part(
                name,
                [py, "-m", "gateway"],
                "gateway.__main__",
                port,
                env={"GATEWAY_PORT": str(port)},
                service="gateway",
            )
        )
    return parts


def instances_env(parts: Sequence[Part]) -> dict[str, str]:
    """``<SERVICE>_INSTANCES`` of every service started more than once (what static
    discovery reads in every part)."""
    env = {}
    for service in ("users", "events", "notifications"):
        urls = [p.url for p in parts if p.url and p.service == service]
        if len(urls) > 1:
            env[f"{service.upper()}_INSTANCES"] = ",".join(str(u) for u in urls)
    return env


def module_exists(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports nobody listens on right now (each held until all are
    picked: ports asked for one at a time may repeat)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of GET ``url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local URL
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


class SuiteError(RuntimeError):
    """A part of the suite could not start; the message says which and why."""


class Suite:
    """The running suite: start it, wait for it, stop all of it."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        with_smtp_sink: bool | None = None,
        say: Callable[[str], None] = lambda line: log.info(line),
        replicas: Mapping[str, int] | None = None,
        restart_policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.env = dict(env)
        self.settings = Settings.from_env("launcher", self.env)
        if with_smtp_sink is None:  # API.md: a local sink unless SMTP_HOST is set
            with_smtp_sink = not self.env.get("SMTP_HOST")
        self.parts = suite_parts(self.settings, with_smtp_sink, replicas)
        self.env.update(instances_env(self.parts))
        self.log_dir = self.settings.data_dir / "log"
        self._say = say
        self._stopping = threading.Event()
        self.supervisor = Supervisor(
            self._spawn,  # type: ignore[arg-type]
            self.say,
            clock=clock,
            policy=restart_policy,
            cleanup=lambda part: _signal_group(part, signal.SIGKILL),  # type: ignore[arg-type]
        )

    def say(self, line: str) -> None:
        """Report ``line`` on the output and in ``DATA_DIR/log/launcher.log``."""
        self._say(line)
        with contextlib.suppress(OSError):
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            with (self.log_dir / "launcher.log").open("a", encoding="utf-8") as out:
                out.write(f"{stamp}Z {line}\n")

    def part(self, name: str) -> Part:
        """The part called ``name``."""
        for part in self.parts:
            if part.name == name:
                return part
        raise KeyError(name)

    # -- start -----------------------------------------------------------------------------

    def start(self, ready_timeout: float = 60.0) -> None:
        """Start every part and wait until the HTTP ones are ready; raise :class:`SuiteError`
        (after stopping what started) when one cannot start."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.settings.data_dir / "mail").mkdir(parents=True, exist_ok=True)
        missing = [f"{p.name} ({p.module})" for p in self.parts if not module_exists(p.module)]
        if missing:
            raise SuiteError(
                "cannot import " + ", ".join(missing) + ": run `invoke install --force`"
            )
        taken = [p for p in self.parts if p.port and port_in_use("127.0.0.1", p.port)]
        sink = any(p.name == "smtp-sink" for p in self.parts)
        if sink and port_in_use("127.0.0.1", self.settings.smtp_port):
            raise SuiteError(
                f"port {self.settings.smtp_port} (SMTP_PORT) is already in use: stop what "
                "listens there, or set SMTP_PORT / SMTP_HOST"
            )
        if taken:
            names = ", ".join(f"{p.name} on {p.port}" for p in taken)
            raise SuiteError(f"ports already in use: {names}. Stop what listens there first.")
        try:
            for part in self.parts:
                self._spawn(part)
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, part: Part) -> None:
        env = {**self.env, **part.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with (self.log_dir / f"{part.name}.log").open("ab") as logfile:
            part.process = subprocess.Popen(  # noqa: S603 - argv built above, no shell
                part.argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the launcher, which stops the group
            )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = [p for p in self.parts if p.port]
        while pending:
            for part in list(pending):
                self._check_alive(part)
                if http_status(f"{part.url}/ready") == 200:
                    pending.remove(part)
            if not pending:
                break
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                raise SuiteError(
                    f"not ready after {timeout:.0f} s: {names} (see {self.log_dir}/<part>.log)"
                )
            time.sleep(0.2)
        for part in self.parts:
            self._check_alive(part)

    def _check_alive(self, part: Part) -> None:
        assert part.process is not None
        code = part.process.poll()
        if code is not None:
            raise SuiteError(
                f"{part.name} exited with code {code} while starting. Its last lines:\n"
                + self.tail(part.name)
            )

    # -- run and stop ----------------------------------------------------------------------

    def tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a part's log."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def watch(self, poll: float = 0.5) -> int:
        """Block until :meth:`request_stop` is called (0), restarting parts that die, or until
        one keeps dying (1, said with its last lines)."""
        while not self._stopping.wait(poll):
            try:
                self.supervisor.tick(self.parts)
            except GiveUp as exc:
                self.say(f"{exc}. Its last lines:\n{self.tail(exc.name)}")
                return 1
        return 0

    def request_stop(self, *_: object) -> None:
        """Ask :meth:`watch` to return (safe in a signal handler)."""
        self._stopping.set()

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every part (newest first), then SIGKILL whatever is left after ``grace``."""
        running = [p for p in reversed(self.parts) if p.process and p.process.poll() is None]
        for part in running:
            _signal_group(part, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for part in running:
            assert part.process is not None
            try:
                part.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{part.name} did not stop within {grace:.0f} s; killing it")
        for part in running:
            _signal_group(part, signal.SIGKILL)  # the group: helpers a part may have forked
            assert part.process is not None
            part.process.wait()

    def addresses(self) -> list[str]:
        """One line per part: its name and address or role."""
        lines = []
        for part in self.parts:
            where = part.url or (
                f"smtp://127.0.0.1:{self.settings.smtp_port}"
                if part.name == "smtp-sink"
                else "worker"
            )
            lines.append(f"  {part.name:<22} {where}")
        return lines


def _signal_group(part: Part, sig: signal.Signals) -> None:
    assert part.process is not None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(part.process.pid, sig)


def run_foreground(
    env: Mapping[str, str],
    say: Callable[[str], None],
    replicas: Mapping[str, int] | None = None,
) -> int:
    """``invoke run``: start the suite, print where it is, stop it all on Ctrl-C/SIGTERM."""
    suite = Suite(env, say=say, replicas=replicas)
    previous = {
        sig: signal.signal(sig, suite.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        say("Starting EventPost...")
        try:
            suite.start()
        except SuiteError as exc:
            say(f"EventPost could not start: {exc}")
            return 1
        say("EventPost is running:")
        for line in suite.addresses():
            say(line)
        say(f"Logs: {suite.log_dir}/<part>.log   Mail: {suite.settings.data_dir / 'mail'}")
        say(f"API: http://127.0.0.1:{suite.settings.gateway_port}/v1   Ctrl-C stops it all.")
        code = suite.watch()
        say("Stopping EventPost...")
        suite.stop()
        say("Stopped.")
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devtools.launcher [--replicas events=2]``: ``invoke run`` once installed."""
    parser = argparse.ArgumentParser(prog="python -m devtools.launcher", description=__doc__)
    parser.add_argument(
        "--replicas",
        default="",
        help="instances per HTTP service, e.g. events=2,notifications=2",
    )
    args = parser.parse_args(argv)
    try:
        replicas = parse_replicas(args.replicas)
    except ValueError as exc:
        parser.error(str(exc))

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return run_foreground(os.environ, say=say, replicas=replicas)


if __name__ == "__main__":
    sys.exit(main())
