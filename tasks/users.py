"""Users service tasks: create-admin, rotate-keys, perf-auth.

Only invoke and the standard library are imported at module level (see tasks/core.py); the
work runs in the project's .venv, against the store and key file the services use (same
environment: DATA_DIR, MONGODB_URL, USERS_SIGNING_KEYS)."""

from __future__ import annotations

import io
import shlex

from invoke import Exit, task

from tasks.core import ROOT, VENV_PY, ensure_installed


@task(
    name="create-admin",
    help={
        "username": "the admin's username (an existing account is promoted)",
        "email": "the email address of a new account",
        "password": "the password (may be left out when promoting)",
    },
)
def create_admin(c, username, email="", password=""):
    """Create an admin account, or promote an existing one."""
    ensure_installed(c)
    cmd = [str(VENV_PY), "-m", "services.users.admin", "create-admin", "--username", username]
    if email:
        cmd += ["--email", email]
    if password:
        cmd.append("--password-stdin")
    # The password goes through stdin, not another process's argv.
    result = c.run(
        shlex.join(cmd),
        in_stream=io.StringIO(password + "\n") if password else False,
        warn=True,
        pty=False,
    )
    if result.exited:
        raise Exit("create-admin failed", result.exited)


@task(name="rotate-keys", help={"keep": "how many keys to keep, the new one included"})
def rotate_keys(c, keep=2):
    """Add a new access-token signing key; the previous one still verifies until dropped."""
    ensure_installed(c)
    c.run(f"{VENV_PY} -m services.users.admin rotate-keys --keep {int(keep)}")


@task(name="perf-auth")
def perf_auth(c):
    """Benchmarks of login (argon2) and access-token verification."""
    ensure_installed(c)
    for script in ("bench_login.py", "bench_tokens.py"):
        c.run(f"{VENV_PY} {ROOT / 'perf' / script}")
