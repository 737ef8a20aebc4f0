"""The container files, checked without a container engine: every Dockerfile (one build stage
shared word for word, the pinned runtime requirements only, only its deployable's code, a
non-root user, a health check on HTTP parts, the command `invoke run` uses), the compose file
(every part, a MongoDB replica set per service, Consul on every part, health-gated start),
heroku.yml, the CI files (the README's test command with a real MongoDB, images built), and
the linters: hadolint, check-jsonschema's vendored schemas, docker-compose 1.29's own check."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.launcher import suite_parts
from eventpost.settings import Settings
from tests.containers._files import (
    CODE,
    DOCKER_DIR,
    HTTP_IMAGES,
    IMAGES,
    ROOT,
    build_stage_text,
    compose,
    env_of,
    instructions,
    run_stage,
    yaml_file,
)

README_TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q invoke==3.0.3 && .venv/bin/invoke test"
)
EVENTPOST_PARTS = {
    "users": "users",
    "users-relay": "relay",
    "events": "events",
    "events-relay": "relay",
    "notifications": "notifications",
    "notifications-worker": "notifications-worker",
    "dispatcher": "dispatcher",
    "email-sender": "email-sender",
    "gateway": "gateway",
}
#: Whose database each part uses (its MONGODB_URL must name that service's own MongoDB).
DATABASE_OF = {
    "users": "users",
    "users-relay": "users",
    "events": "events",
    "events-relay": "events",
    "notifications": "notifications",
    "notifications-worker": "notifications",
    "dispatcher": "notifications",
}


def _tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (`invoke lint-containers` installs it)")
    return path


# -- Dockerfiles ---------------------------------------------------------------------------


def test_there_is_a_dockerfile_per_deployable_and_no_other() -> None:
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKER_DIR.glob("*.Dockerfile")} == set(
        IMAGES
    )


def test_every_dockerfile_shares_one_build_stage_word_for_word() -> None:
    """Same text, same layers: the engine builds the dependencies once for all images."""
    first, *others = (build_stage_text(name) for name in IMAGES)
    assert all(text == first for text in others)


@pytest.mark.parametrize("name", IMAGES)
def test_multi_stage_on_the_slim_python_3_11_base(name: str) -> None:
    froms = [i.args for i in instructions(name) if i.keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS builder", "${BASE_IMAGE}"]
    args = [i.args for i in instructions(name) if i.keyword == "ARG"]
    assert "BASE_IMAGE=python:3.11-slim-bookworm" in args


@pytest.mark.parametrize("name", IMAGES)
def test_only_the_pinned_runtime_requirements_are_installed(name: str) -> None:
    runs = " ".join(i.args for i in instructions(name) if i.keyword == "RUN" and i.stage == 0)
    assert "pip install" in runs
    assert "-c requirements.txt -r runtime.txt" in runs
    assert "python runtime_requirements.py > runtime.txt" in runs


def test_the_runtime_requirements_are_pinned_and_leave_out_dev_tooling() -> None:
    sys.path.insert(0, str(ROOT / "containers"))
    try:
        from runtime_requirements import runtime_requirements
    finally:
        sys.path.pop(0)
    lines = runtime_requirements(str(ROOT / "pyproject.toml"))
    names = {re.split(r"[=<>!~ ]", line, maxsplit=1)[0].lower() for line in lines}
    assert {"falcon", "granian", "uvicorn", "pika", "pymongo"} <= names
    assert not names & {"invoke", "aiosmtpd", "pytest", "ruff", "mongomock", "httpx"}
    pinned = {
        line.split("==")[0].lower(): line.split("==")[1]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for line in lines:
        name, _, version = line.partition("==")
        assert pinned[name.lower()] == version, line


@pytest.mark.parametrize("name", IMAGES)
def test_the_run_stage_copies_only_its_deployable_and_the_toolkit(name: str) -> None:
    copies = [i.args.split() for i in run_stage(name) if i.keyword == "COPY"]
    from_builder = [c for c in copies if c[0].startswith("--from=")]
    assert from_builder == [["--from=builder", "/opt/venv", "/opt/venv"]]
    sources = {c[0] for c in copies if not c[0].startswith("--")}
    assert sources == {"eventpost/"} | CODE[name]


def test_dockerignore_sends_only_code_and_requirements() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "requirements.txt",
        "pyproject.toml",
        "containers/runtime_requirements.py",
        "containers/wheelhouse",
        "eventpost",
        "services",
        "gateway",
        "email_sender",
    }


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = [i.args for i in run_stage(name) if i.keyword == "USER"]
    assert users == ["10001:10001"]
    keywords = [i.keyword for i in run_stage(name)]
    assert keywords.index("USER") < keywords.index("CMD")


@pytest.mark.parametrize("name", IMAGES)
def test_http_parts_have_a_health_check_on_ready(name: str) -> None:
    checks = [i for i in run_stage(name) if i.keyword == "HEALTHCHECK"]
    if name not in HTTP_IMAGES:
        assert checks == []
        return
    (check,) = checks
    argv = check.json_args()
    assert argv[:2] == ["python", "-c"]
    assert "/ready" in argv[2]
    port_variable = "GATEWAY_PORT" if name == "gateway" else f"{name.upper()}_PORT"
    assert port_variable in argv[2]


def _image_command(name: str) -> list[str]:
    entry = [i.json_args() for i in run_stage(name) if i.keyword == "ENTRYPOINT"]
    (cmd,) = [i.json_args() for i in run_stage(name) if i.keyword == "CMD"]
    return (entry[0] if entry else []) + cmd


def _without_option(argv: list[str], option: str) -> list[str]:
    at = argv.index(option)
    return argv[:at] + argv[at + 2 :]


def _launcher_commands() -> dict[str, list[str]]:
    """What `invoke run` starts, by part, with the interpreter path cut off."""
    parts = suite_parts(Settings(), with_smtp_sink=False)
    return {p.name: p.argv[1:] for p in parts}


@pytest.mark.parametrize("name", IMAGES)
def test_the_command_is_the_one_invoke_run_uses_on_all_interfaces(name: str) -> None:
    launcher = _launcher_commands()
    command = _image_command(name)
    env = env_of(name)
    if name in ("users", "events", "notifications"):
        # The launcher's server command, on all interfaces, its port from the environment
        # (Heroku's PORT, else the image's *_PORT).
        (part,) = IMAGES[name]
        expected = launcher[part]
        assert expected[expected.index("--host") + 1] == "127.0.0.1"
        assert expected[expected.index("--port") + 1] == str(Settings().service_ports[name])
        assert command[:1] == ["python"] and "--port" not in command
        assert command[command.index("--host") + 1] == "0.0.0.0"
        assert _without_option(command[1:], "--host") == _without_option(
            _without_option(expected, "--port"), "--host"
        )
        assert env[f"{name.upper()}_PORT"] == str(Settings().service_ports[name])
        return
    assert command[0] == "python"
    for part in IMAGES[name]:
        expected = launcher[part]
        if name == "relay":
            assert command[1:3] == expected[:2]
            assert expected[2:] in (["--service", "users"], ["--service", "events"])
        else:
            assert command[1:] == expected
    if name == "gateway":
        assert env["GATEWAY_HOST"] == "0.0.0.0"
        assert env["GATEWAY_PORT"] == "8000"


def test_hadolint_finds_nothing() -> None:
    hadolint = _tool("hadolint")
    files = sorted(str(p) for p in DOCKER_DIR.glob("*.Dockerfile"))
    result = subprocess.run([hadolint, *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# -- docker-compose.yml --------------------------------------------------------------------


def test_compose_has_every_part_and_the_infrastructure() -> None:
    services = compose()["services"]
    infrastructure = {
        "mongo-users",
        "mongo-events",
        "mongo-notifications",
        "rabbitmq",
        "consul",
        "mailpit",
        "vector",
        "loki",
        "grafana",
    }
    assert set(services) == set(EVENTPOST_PARTS) | infrastructure
    assert "management" in services["rabbitmq"]["image"]
    assert "-dev" in services["consul"]["command"]
    assert services["mailpit"]["image"].startswith("axllent/mailpit:")


@pytest.mark.parametrize("part", EVENTPOST_PARTS)
def test_each_part_is_built_from_its_dockerfile_and_told_where_consul_is(part: str) -> None:
    service = compose()["services"][part]
    image = EVENTPOST_PARTS[part]
    assert service["build"] == {"context": ".", "dockerfile": f"docker/{image}.Dockerfile"}
    assert service["image"] == f"eventpost/{image}:latest"
    env = service["environment"]
    assert env["CONSUL_HTTP_ADDR"] == "http://consul:8500"
    assert env["AMQP_URL"].startswith("amqp://guest:guest@rabbitmq:5672/")
    assert env["SMTP_HOST"] == "mailpit"


@pytest.mark.parametrize("part", EVENTPOST_PARTS)
def test_each_service_uses_its_own_mongodb(part: str) -> None:
    env = compose()["services"][part]["environment"]
    if part not in DATABASE_OF:
        assert "MONGODB_URL" not in env
        return
    own = DATABASE_OF[part]
    assert env["MONGODB_URL"] == f"mongodb://mongo-{own}:27017/?replicaSet=rs0"


@pytest.mark.parametrize("service", ["users", "events", "notifications"])
def test_each_mongodb_is_a_replica_set_initiated_by_compose_with_its_own_volume(
    service: str,
) -> None:
    mongo = compose()["services"][f"mongo-{service}"]
    assert mongo["command"][:2] == ["--replSet", "rs0"]
    assert mongo["volumes"] == [f"mongo-{service}:/data/db"]
    script = mongo["healthcheck"]["test"][-1]
    assert "rs.initiate" in script
    assert f"host: 'mongo-{service}:27017'" in script
    assert "isWritablePrimary" in script


def test_start_is_health_gated() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            wanted = condition["condition"]
            assert wanted in ("service_healthy", "service_started"), (name, target)
            if wanted == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on {target}'s health"
    for part in EVENTPOST_PARTS:
        conditions = {c["condition"] for c in services[part]["depends_on"].values()}
        assert conditions == {"service_healthy"}, part


def test_the_gateway_is_on_port_8000() -> None:
    gateway = compose()["services"]["gateway"]
    assert gateway["ports"] == ["127.0.0.1:8000:8000"]
    assert gateway["environment"]["GATEWAY_PORT"] == "8000"


def test_the_collector_reads_every_part_and_ships_to_loggly_when_a_token_is_set() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert service["labels"]["io.eventpost.suite"] == "eventpost", name
    vector = services["vector"]
    assert vector["environment"]["LOGGLY_TOKEN"] == "${LOGGLY_TOKEN:-}"
    config = yaml_file("containers/vector/vector.yaml")
    assert config["sources"]["containers"]["include_labels"] == ["io.eventpost.suite=eventpost"]
    sinks = config["sinks"]
    assert sinks["loki"]["inputs"] == ["records"]
    loggly = sinks["loggly"]
    assert loggly["inputs"] == ["to_loggly"]
    assert "LOGGLY_TOKEN" in config["transforms"]["to_loggly"]["condition"]
    assert "${LOGGLY_TOKEN" in loggly["uri"]
    for sink in (loggly, sinks["http"]):  # batched, and never holding up the local path
        assert sink["batch"]["timeout_secs"] > 0
        assert sink["buffer"]["when_full"] == "drop_newest"


def test_docker_compose_1_29_accepts_the_file() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("docker-compose.yml", "vendor.compose-spec"),
        (".github/workflows/ci.yml", "vendor.github-workflows"),
        (".travis.yml", "vendor.travis"),
        (".circleci/config.yml", "vendor.circle-ci"),
    ],
)
def test_valid_against_its_schema(path: str, schema: str) -> None:
    check = _tool("check-jsonschema")
    result = subprocess.run(
        [check, "--builtin-schema", schema, str(ROOT / path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- heroku.yml and CI ---------------------------------------------------------------------


def test_heroku_builds_the_events_image_and_runs_it_on_heroku_port() -> None:
    heroku = yaml_file("heroku.yml")
    assert heroku["build"]["docker"] == {"web": "docker/events.Dockerfile"}
    web = shlex.split(heroku["run"]["web"])
    # The image's own command: its port comes from Heroku's PORT (eventpost.serve reads it).
    assert web == _image_command("events")
    worker = heroku["run"]["worker"]
    assert worker["image"] == "web"
    assert shlex.split(worker["command"][0]) == [
        "python",
        "-m",
        "eventpost.messaging.relay",
        "--service",
        "events",
    ]
    release = heroku["release"]
    assert release["image"] == "web"
    (command,) = release["command"]
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "heroku-release", "exec")
    assert "ping()" in argv[2] and "MONGODB_URL" in argv[2]


def _ci_commands() -> dict[str, str]:
    github = yaml_file(".github/workflows/ci.yml")
    travis = yaml_file(".travis.yml")
    circle = yaml_file(".circleci/config.yml")
    steps = [s.get("run", "") for job in github["jobs"].values() for s in job["steps"]]
    circle_steps = [
        s["run"]["command"] if isinstance(s, dict) else ""
        for job in circle["jobs"].values()
        for s in job["steps"]
    ]
    travis_lines = [
        *travis["before_install"],
        *travis["install"],
        *travis["before_script"],
        *travis["script"],
    ]
    return {
        "github": "\n".join(steps),
        "travis": "\n".join(travis_lines),
        "circle": "\n".join(circle_steps),
    }


@pytest.mark.parametrize("ci", ["github", "travis", "circle"])
def test_ci_runs_the_readme_test_command_on_a_real_mongodb_and_builds_the_images(ci: str) -> None:
    commands = _ci_commands()[ci]
    assert README_TEST_COMMAND in commands.splitlines()
    assert "invoke buildContainers" in commands
    assert "containers/mongo_replica_set.py" in commands
    text = {
        "github": ".github/workflows/ci.yml",
        "travis": ".travis.yml",
        "circle": ".circleci/config.yml",
    }[ci]
    raw = (ROOT / text).read_text()
    assert "MONGODB_URL" in raw and "replicaSet=rs0" in raw
    assert re.search(r"mongo:\d+\.\d+\.\d+", raw)
    assert "--replSet" in raw


def test_the_container_tasks_have_the_seed_names() -> None:
    from tasks import ns

    names = set(ns.task_names)
    assert {"buildContainers", "runContainers", "stopContainers", "populateHerokuEventsApp"} <= (
        names
    )
