"""The playbooks parse (ansible-playbook --syntax-check), ansible-lint's production profile
passes, and the example vault names every secret the playbooks read."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml

from tasks.aws import ANSIBLE_CFG, PROVISION
from tasks.core import ROOT
from tests.provision.conftest import BIN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ENV = {"ANSIBLE_CONFIG": str(ANSIBLE_CFG), "NO_COLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


@pytest.mark.parametrize("playbook", ["playbook.yml", "stop.yml"])
def test_syntax_check(ansible, playbook: str) -> None:
    result = run([str(ansible), "--syntax-check", str(PROVISION / playbook)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"playbook: {PROVISION / playbook}" in result.stdout


def test_ansible_lint_production_profile_is_clean(ansible) -> None:
    # From the root, as a user runs it: .ansible-lint keeps it to the Ansible content.
    result = run([str(BIN / "ansible-lint"), "--offline", "--profile", "production"])
    print(result.stdout, result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout


def test_the_example_vault_names_every_secret() -> None:
    used = set()
    for path in PROVISION.rglob("*.yml"):
        if path.name != "pass.example.yml":
            used |= set(re.findall(r"\bvault_\w+", path.read_text()))
    example = yaml.safe_load((PROVISION / "group_vars/all/pass.example.yml").read_text())
    assert used - {"vault_password_file"} <= set(example), used - set(example)
    assert all(value in ("", None) for key, value in example.items() if "aws" in key)


def test_the_real_vault_is_never_committed() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "provision/group_vars/all/pass.yml"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0
