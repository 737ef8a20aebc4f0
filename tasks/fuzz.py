"""Fuzz tasks: fuzz (schemathesis over docs/openapi.yaml through the running suite's gateway).

Only invoke and the standard library are imported here (see tasks/core.py)."""

from __future__ import annotations

import shlex

from invoke import task

from tasks.core import ROOT, VENV_PY, ensure_installed, ensure_rabbitmq


@task(
    help={
        "max_examples": "generated cases per operation and phase (default 50)",
        "seed": "hypothesis seed, for a reproducible run (default 14)",
        "report_dir": "keep schemathesis's junit and ndjson reports in this directory",
    }
)
def fuzz(c, max_examples=50, seed=14, report_dir=""):
    """Contract fuzzing: start the whole suite on free ports, make an admin and a user token,
    and run schemathesis with every check and every phase (examples, coverage, fuzzing,
    stateful) through the real gateway. Exits non-zero on any failure."""
    ensure_installed(c)
    ensure_rabbitmq(c)
    argv = [
        str(VENV_PY), "-m", "tests.fuzz.run",
        "--max-examples", str(int(max_examples)), "--seed", str(int(seed)),
    ]  # fmt: skip
    if report_dir:
        argv += ["--report-dir", report_dir]
    with c.cd(str(ROOT)):
        c.run(shlex.join(argv), pty=False)
