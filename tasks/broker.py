"""Broker tasks: parked (list the parking queues, or move their messages back).

Only invoke and the standard library are imported here (see tasks/core.py)."""

from __future__ import annotations

import shlex

from invoke import task

from tasks.core import ROOT, VENV_PY, ensure_installed


@task(
    iterable=["id", "queue"],
    help={
        "replay": "move the messages back to their queue (all, or those given with --id)",
        "id": "only the message with this envelope id (repeatable)",
        "queue": "only this consumer queue's parking queue (repeatable; default: all)",
        "json": "one JSON object per line instead of a table",
    },
)
def parked(c, replay=False, id=None, queue=None, json=False):
    """List what sits in the parking queues (queue, id, type, reason, age, request id, error)
    of the broker at AMQP_URL; with --replay, move it back to its queue to be tried again."""
    ensure_installed(c)
    cmd = [str(VENV_PY), "-m", "eventpost.messaging.parking"]
    if replay:
        cmd.append("--replay")
    if json:
        cmd.append("--json")
    for value in id or []:
        cmd += ["--id", value]
    for value in queue or []:
        cmd += ["--queue", value]
    with c.cd(str(ROOT)):
        c.run(shlex.join(cmd), pty=False)
