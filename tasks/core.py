"""Core tasks: install, run, test, lint, perf, logs (and the seed's task names as aliases).

Only the standard library and invoke are imported here: on a fresh machine these tasks are
what installs everything else (into ``.venv``) before anything of the project runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import venv
from pathlib import Path
from urllib.parse import urlparse

from invoke import Exit, task

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
VENV_PY = VENV / "bin" / "python"
STAMP = VENV / ".eventpost-installed"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}


def _say(message: str) -> None:
    print(message, flush=True)


def _deps_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_installed(c, force: bool = False) -> None:
    """Create ``.venv`` and install the pinned dependencies and the project (once per change
    of requirements.txt / pyproject.toml)."""
    if not VENV_PY.exists():
        _say("Creating .venv ...")
        venv.EnvBuilder(with_pip=True).create(VENV)
    fingerprint = _deps_fingerprint()
    if not force and STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    _say("Installing dependencies into .venv (pinned in requirements.txt) ...")
    pip = f"{VENV_PY} -m pip install --disable-pip-version-check -q"
    c.run(f"{pip} -r {ROOT / 'requirements.txt'}")
    c.run(f"{pip} --no-deps -e {ROOT}")
    STAMP.write_text(fingerprint)


def _amqp_address() -> tuple[str, int]:
    # AMQP_URL may list several nodes, comma separated: the first one is checked.
    url = urlparse((os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL).split(",")[0].strip())
    return url.hostname or "127.0.0.1", url.port or 5672


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def ensure_rabbitmq(c) -> None:
    """Make sure RabbitMQ answers at AMQP_URL: start a local rabbitmq-server if it is
    installed, install it with apt when running as root on Debian/Ubuntu, else stop with
    what to do."""
    host, port = _amqp_address()
    if _reachable(host, port):
        return
    if host not in LOCAL_HOSTS:
        raise Exit(f"RabbitMQ is not reachable at {host}:{port} (AMQP_URL). Start it there.", 2)
    if shutil.which("rabbitmq-server") is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            _say("RabbitMQ is not installed: installing it with apt-get ...")
            env = {"DEBIAN_FRONTEND": "noninteractive"}
            c.run("apt-get update -q", env=env)
            c.run("apt-get install -y -q rabbitmq-server", env=env)
        else:
            raise Exit(
                "RabbitMQ is not running and not installed. Install it "
                "(Debian/Ubuntu: sudo apt-get install rabbitmq-server) or point AMQP_URL at one.",
                2,
            )
    if not _reachable(host, port):
        _say("Starting a local RabbitMQ (rabbitmq-server -detached) ...")
        c.run("rabbitmq-server -detached", warn=True, hide=True)
        deadline = time.monotonic() + 120
        while not _reachable(host, port):
            if time.monotonic() > deadline:
                raise Exit("RabbitMQ did not start within 120 s; see /var/log/rabbitmq/.", 2)
            time.sleep(1)
    if shutil.which("rabbitmqctl"):
        c.run("rabbitmqctl await_startup --timeout 120", warn=True, hide=True)
    _say(f"RabbitMQ is up at {host}:{port}.")


@task
def install(c, force=False):
    """Create .venv and install the pinned dependencies (run by run/test when needed)."""
    ensure_installed(c, force=force)


@task(name="installDependencies")
def install_dependencies(c):
    """The seed's name for `invoke install`."""
    ensure_installed(c, force=True)


@task
def lock(c):
    """Regenerate requirements.txt (every dependency pinned) from pyproject.toml."""
    ensure_installed(c)
    c.run(f"{VENV_PY} -m pip install -q pip-tools==7.6.2")
    c.run(
        f"{VENV_PY} -m piptools compile -q --strip-extras --extra dev --no-header "
        f"--no-emit-index-url --no-emit-find-links "
        f"--output-file requirements.txt pyproject.toml"
    )


@task(help={"replicas": "instances per HTTP service, e.g. events=2,notifications=2"})
def run(c, replicas=""):
    """Start the whole suite in the foreground (Ctrl-C or SIGTERM stops all of it); a part
    that dies is restarted, one that keeps dying stops the suite."""
    ensure_installed(c)
    ensure_rabbitmq(c)
    sys.stdout.flush()
    # Become the launcher, so SIGTERM sent to this process reaches it directly.
    os.chdir(ROOT)
    argv = [str(VENV_PY), "-m", "devtools.launcher"]
    if replicas:
        argv += ["--replicas", replicas]
    os.execv(str(VENV_PY), argv)


@task(help={"args": "extra pytest arguments, e.g. '-k users -x'"})
def test(c, args=""):
    """Run every test (starting RabbitMQ first when it is not running)."""
    ensure_installed(c)
    ensure_rabbitmq(c)
    c.run(f"{VENV_PY} -m pytest {args}", pty=False)


@task(help={"args": "extra pytest arguments"})
def coverage(c, args=""):
    """Run every test under coverage and print the report."""
    ensure_installed(c)
    ensure_rabbitmq(c)
    c.run(f"{VENV_PY} -m pip install -q coverage==7.17.5")
    c.run(
        f"{VENV_PY} -m coverage run --source=eventpost,services,gateway,email_sender "
        f"-m pytest {args}"
    )
    c.run(f"{VENV_PY} -m coverage report --skip-empty")


@task
def lint(c):
    """ruff: lint and formatting check."""
    ensure_installed(c)
    c.run(f"{VENV_PY} -m ruff check .")
    c.run(f"{VENV_PY} -m ruff format --check .")


@task(help={"only": "run only perf/bench_<only>.py"})
def perf(c, only=""):
    """Run the benchmarks under perf/ (each prints its figures and writes perf/results/)."""
    ensure_installed(c)
    ensure_rabbitmq(c)
    scripts = sorted((ROOT / "perf").glob(f"bench_{only or '*'}.py"))
    if not scripts:
        raise Exit(f"no benchmark perf/bench_{only or '*'}.py", 1)
    for script in scripts:
        _say(f"== {script.name}")
        c.run(f"{VENV_PY} {script}")


@task(
    help={
        "request_id": "only records of this request ID",
        "part": "only this part's log (e.g. gateway, users, email-sender)",
        "level": "only records of this level or worse",
    }
)
def logs(c, request_id="", part="", level=""):
    """Show the suite's JSON logs from DATA_DIR/log, filtered (one line per record)."""
    log_dir = Path(os.environ.get("DATA_DIR") or ROOT / "var") / "log"
    order = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    floor = order.index(level.upper()) if level else 0
    for path in sorted(log_dir.glob(f"{part or '*'}.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = {"message": line, "level": "INFO"}
            if request_id and record.get("request_id") != request_id:
                continue
            lvl = str(record.get("level", "INFO")).upper()
            if lvl in order and order.index(lvl) < floor:
                continue
            print(f"{path.stem:<20} {line}")
