"""``python -m eventpost.serve``: its port and its command line (serving is in the integration
tests: users over HTTP, Consul registration, the launcher)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from eventpost.serve import default_port, default_threads, port_in_use, server_command
from eventpost.settings import Settings


def test_the_port_is_herokus_port_else_the_services_own():
    settings = Settings.from_env("events", {"EVENTS_PORT": "9102"})
    assert default_port(settings, {}) == 9102
    assert default_port(settings, {"PORT": "5123"}) == 5123
    assert default_port(settings, {"PORT": ""}) == 9102


@pytest.mark.parametrize("port", ["http", "0", "70000"])
def test_a_port_that_is_not_one_is_refused_plainly(port):
    with pytest.raises(ValueError, match="PORT="):
        default_port(Settings.from_env("events", {}), {"PORT": port})


def test_the_command_names_the_service_host_and_port():
    argv = server_command("users", "0.0.0.0", 8001, threads=4, workers=2)
    assert argv[0] == sys.executable
    assert argv[1:] == [
        *("-m", "eventpost.serve", "users", "--host", "0.0.0.0", "--port", "8001"),
        *("--threads", "4", "--workers", "2"),
    ]
    assert "--port" not in server_command("events", "0.0.0.0")
    assert "--threads" not in server_command("events", "0.0.0.0")


@pytest.mark.parametrize(
    "service, env, threads",
    [
        ("events", {}, 1),
        ("notifications", {}, 8),
        ("users", {}, 8),
        ("events", {"MONGODB_URL": "mongodb://db:27017"}, 8),
        ("notifications", {"MONGODB_URL": "mongodb://db:27017"}, 8),
    ],
)
def test_threads_follow_where_the_service_waits(service, env, threads):
    assert default_threads(service, Settings.from_env(service, env)) == threads


@pytest.mark.parametrize(
    "args, message",
    [(["billing"], "invalid choice"), (["users", "--threads", "0"], "at least 1")],
)
def test_nonsense_arguments_exit_2_with_a_message(args, message):
    done = subprocess.run(
        [sys.executable, "-m", "eventpost.serve", *args], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_a_free_port_is_not_in_use_and_a_listened_one_is():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        assert port_in_use("127.0.0.1", listening.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert not port_in_use("127.0.0.1", port)
