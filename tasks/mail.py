"""Email tasks: mail (the newest messages in the dev mailbox), perf-email (the email-sender
benchmark).

Only invoke and the standard library are imported here (see tasks/core.py)."""

from __future__ import annotations

import os
import shlex
from email import policy
from email.parser import BytesHeaderParser
from pathlib import Path

from invoke import Exit, task

from tasks.core import ROOT, VENV_PY, ensure_installed, ensure_rabbitmq


def _mail_dir() -> Path:
    return Path(os.environ.get("DATA_DIR") or ROOT / "var") / "mail"


def _when(name: str) -> str:
    """``20261201T190000.123456Z-<uuid>.eml`` -> ``2026-12-01 19:00:00Z``."""
    stamp = name.split("-", 1)[0]
    if len(stamp) < 15:
        return "?"
    return f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}Z"


@task(help={"limit": "how many (default 10)", "to": "only messages to this address"})
def mail(c, limit=10, to=""):
    """List the newest messages the dev SMTP sink kept under DATA_DIR/mail: time, to, subject
    (newest first). The files themselves are .eml, readable by any mail client."""
    directory = _mail_dir()
    if not directory.is_dir():
        raise Exit(f"no mailbox at {directory} (the SMTP sink has received nothing yet)", 1)
    paths = sorted((p for p in directory.glob("*.eml") if not p.name.startswith(".")), reverse=True)
    parser = BytesHeaderParser(policy=policy.default)
    shown = 0
    for path in paths:
        if shown >= int(limit):
            break
        with open(path, "rb") as fh:
            headers = parser.parse(fh)
        recipients = str(headers.get("To") or headers.get("X-RcptTo") or "")
        if to and to.lower() not in recipients.lower():
            continue
        print(f"{_when(path.name)}  {recipients:<40}  {headers.get('Subject', '')}")
        shown += 1
    if not shown:
        print(f"no messages in {directory}")


@task(
    name="perf-email",
    help={
        "jobs": "jobs per run (default 2000)",
        "workers": "worker counts to compare (default 1,2)",
        "prefetch": "consumer prefetch (default 20)",
    },
)
def perf_email(c, jobs=2000, workers="1,2", prefetch=20):
    """Email-sender throughput into a local SMTP sink with one worker and with two
    (perf/bench_email.py; writes perf/results/bench_email.json)."""
    ensure_installed(c)
    ensure_rabbitmq(c)
    cmd = [str(VENV_PY), str(ROOT / "perf" / "bench_email.py"), "--n", str(int(jobs))]
    cmd += ["--workers", workers, "--prefetch", str(int(prefetch))]
    c.run(shlex.join(cmd), pty=False)
