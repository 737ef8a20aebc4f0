"""AWS tasks: runAWS and stopAWS (the seed's names), Ansible playbooks under provision/.

``invoke runAWS --vault-password-file F [--tags T] [--check]`` runs provision/playbook.yml:
terminate the suite's old EC2 instances (tag project=eventpost), start new ones, install
Docker on them, start their containers, wait for the ports and populate the suite.
``invoke stopAWS --vault-password-file F`` runs provision/stop.yml (terminate them all).

AWS credentials and every other secret come only from the vault,
provision/group_vars/all/pass.yml (git-ignored; pass.example.yml names its variables), or the
vault file EVENTPOST_VAULT_FILE names. AWS_ENDPOINT_URL, when set, sends every AWS call to
that AWS-compatible endpoint (what the tests do, with moto's server).

Ansible itself is installed into .venv by these tasks (pinned below), with the amazon.aws and
community.docker collections the ``ansible`` package bundles (Ansible Galaxy is not needed).
Only the standard library and invoke are imported here (see tasks/core.py).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from invoke import Exit, task

from tasks.core import ROOT, VENV, VENV_PY, ensure_installed

PROVISION = ROOT / "provision"
ANSIBLE_CFG = ROOT / "ansible.cfg"
DEFAULT_VAULT = PROVISION / "group_vars" / "all" / "pass.yml"
# ansible 12 is the newest release for Python 3.11 (ansible-core 2.19); boto3/botocore are
# what the amazon.aws modules call AWS with.
ANSIBLE_PINS = ("ansible==12.3.0", "ansible-core==2.19.14", "boto3==1.44.8", "botocore==1.44.8")
ANSIBLE_STAMP = VENV / ".eventpost-ansible"
VAULT_HEADER = "$ANSIBLE_VAULT;"


def _say(message: str) -> None:
    print(message, flush=True)


def ansible_bin(name: str) -> Path:
    """The path of an Ansible command (``ansible-playbook``, ``ansible-vault``) in .venv."""
    return VENV / "bin" / name


def ensure_ansible(c) -> None:
    """Install the pinned Ansible (with its bundled collections) and boto3 into .venv, once."""
    ensure_installed(c)
    wanted = "\n".join(ANSIBLE_PINS) + "\n"
    playbook = ansible_bin("ansible-playbook")
    if playbook.exists() and ANSIBLE_STAMP.exists() and ANSIBLE_STAMP.read_text() == wanted:
        return
    _say(f"Installing {', '.join(ANSIBLE_PINS)} into .venv ...")
    c.run(f"{VENV_PY} -m pip install --disable-pip-version-check -q {shlex.join(ANSIBLE_PINS)}")
    ANSIBLE_STAMP.write_text(wanted)


def vault_file() -> Path:
    """The vault with the AWS credentials: EVENTPOST_VAULT_FILE, else the one in group_vars."""
    return Path(os.environ.get("EVENTPOST_VAULT_FILE") or DEFAULT_VAULT).resolve()


def ansible_env() -> dict[str, str]:
    """This repository's ansible.cfg whatever the caller's working directory is."""
    return {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_CFG)}


def check_vault(vault: Path, password_file: str) -> None:
    """Stop with a clear message, before anything runs, when the vault is missing, not
    encrypted, or the password does not open it."""
    example = PROVISION / "group_vars" / "all" / "pass.example.yml"
    if not vault.is_file():
        raise Exit(
            f"No vault with the AWS credentials at {vault}. Create it with\n"
            f"  {ansible_bin('ansible-vault')} create {vault}\n"
            f"and fill in the variables {example.relative_to(ROOT)} lists. "
            "Nothing was run.",
            2,
        )
    if not vault.read_text(errors="replace").startswith(VAULT_HEADER):
        raise Exit(
            f"{vault} is not encrypted: secrets live only in an ansible-vault file "
            f"({ansible_bin('ansible-vault')} encrypt {vault}). Nothing was run.",
            2,
        )
    if not password_file:
        raise Exit("--vault-password-file F is required (F holds the vault's password).", 2)
    if not Path(password_file).is_file():
        raise Exit(f"The vault password file {password_file} does not exist. Nothing was run.", 2)
    opened = subprocess.run(
        [str(ansible_bin("ansible-vault")), "view", "--vault-password-file", password_file, vault],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=ansible_env(),
        timeout=120,
        check=False,
    )
    if opened.returncode != 0:
        raise Exit(
            f"The password in {password_file} does not decrypt the vault {vault} "
            "(wrong vault password?). No instance was created or terminated.",
            2,
        )


def run_playbook(c, playbook: str, password_file: str, tags: str = "", check: bool = False):
    """ansible-playbook of provision/<playbook> with the vault, from the repository root."""
    ensure_ansible(c)
    vault = vault_file()
    check_vault(vault, password_file)
    argv = [
        str(ansible_bin("ansible-playbook")),
        str(PROVISION / playbook),
        "--vault-password-file",
        str(Path(password_file).resolve()),
    ]
    if vault != DEFAULT_VAULT.resolve():
        argv += ["--extra-vars", f"@{vault}"]
    if tags:
        argv += ["--tags", tags]
    if check:
        argv.append("--check")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    _say(f"AWS endpoint: {endpoint}" if endpoint else "AWS endpoint: AWS itself")
    with c.cd(str(ROOT)):
        result = c.run(shlex.join(argv), env=ansible_env(), warn=True, pty=False)
    if result.exited != 0:
        raise Exit(f"ansible-playbook {playbook} failed (exit {result.exited}); see above.", 1)


@task(
    name="runAWS",
    help={
        "vault_password_file": "file holding the password of provision/group_vars/all/pass.yml",
        "tags": "only these plays/tasks: instances, ssh, deploy, populate (comma-separated)",
        "check": "ansible-playbook --check: report what would change, change nothing",
    },
)
def run_aws(c, vault_password_file="", tags="", check=False):
    """Provision the suite on EC2 with provision/playbook.yml (replaces its instances)."""
    run_playbook(c, "playbook.yml", vault_password_file, tags=tags, check=check)


@task(
    name="stopAWS",
    help={
        "vault_password_file": "file holding the password of provision/group_vars/all/pass.yml",
        "check": "ansible-playbook --check: report what would be terminated",
    },
)
def stop_aws(c, vault_password_file="", check=False):
    """Terminate every EC2 instance of the suite (tag project=eventpost)."""
    run_playbook(c, "stop.yml", vault_password_file, check=check)
