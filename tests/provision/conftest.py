"""Fixtures of the provisioning tests: the pinned Ansible in .venv, a vault made with
ansible-vault, moto's EC2 server on a free port, and ``invoke runAWS`` run as a user runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from invoke import Context

from tasks.aws import ANSIBLE_CFG, ansible_bin, ensure_ansible
from tasks.core import ROOT

BIN = Path(sys.executable).parent
PASSWORD = "the vault password of the tests"


@pytest.fixture(scope="session")
def ansible() -> Path:
    """The pinned Ansible, installed into .venv by the same code `invoke runAWS` uses."""
    ensure_ansible(Context())
    return ansible_bin("ansible-playbook")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_vault(directory: Path, values: dict, password: str = PASSWORD) -> tuple[Path, Path]:
    """An ansible-vault encrypted YAML file of ``values`` and the file with its password."""
    directory.mkdir(parents=True, exist_ok=True)
    password_file = directory / "vault-password"
    password_file.write_text(password + "\n")
    vault = directory / "pass.yml"
    vault.write_text(yaml.safe_dump(values))
    subprocess.run(
        [
            str(ansible_bin("ansible-vault")),
            "encrypt",
            "--vault-password-file",
            password_file,
            str(vault),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_CFG)},
    )
    assert vault.read_text().startswith("$ANSIBLE_VAULT;")
    return vault, password_file


def aws_env(endpoint: str | None, vault: Path) -> dict[str, str]:
    """The environment of a run: the test's vault and endpoint, no AWS credentials of the
    caller's (they must come from the vault) and no real AWS configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        EVENTPOST_VAULT_FILE=str(vault),
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        ANSIBLE_FORCE_COLOR="0",
        NO_COLOR="1",
    )
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def invoke(args: list[str], env: dict[str, str], timeout: float = 600):
    """``invoke <args>`` from the repository root, as a user types it."""
    return subprocess.run(
        [str(BIN / "invoke"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server (every AWS API in one process) on a free port, for the whole session."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def moto_endpoint(moto_server: str) -> str:
    """The moto server, emptied (moto's reset API) before each test."""
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=30
    ).close()
    return moto_server
