"""``bzt perf/taurus/events.yml`` works on a running suite: Taurus runs both seed scenarios with
its Locust executor against the gateway, every request succeeds, and it exits 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Context

from devtools.launcher import free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "perf"))

from loadtest import ensure_admin, ensure_events, suite_at  # noqa: E402

from tasks.loadtest import ensure_perf_tools  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq, pytest.mark.timeout(900)]


def test_bzt_runs_the_events_load_test_on_a_running_suite(tmp_path):
    ensure_perf_tools(Context())
    url = f"http://127.0.0.1:{free_port()}"
    with suite_at(url, tmp_path, lambda line: None) as target:
        admin = ensure_admin(target)
        ensure_events(target, admin, lambda line: None)
        env = {
            **os.environ,
            "EVENTPOST_ADMIN_USERNAME": admin[0],
            "EVENTPOST_ADMIN_PASSWORD": admin[1],
        }
        argv = [
            str(Path(sys.executable).parent / "bzt"), str(ROOT / "perf" / "taurus" / "events.yml"),
            "-o", f"settings.env.EVENTPOST_URL={url}",
            "-o", f"settings.artifacts-dir={tmp_path / 'taurus'}",
            "-o", "execution.0.hold-for=5s", "-o", "execution.1.hold-for=5s",
            "-o", "execution.0.ramp-up=1s", "-o", "execution.1.ramp-up=1s",
        ]  # fmt: skip
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    samples = re.search(r"Samples count: (\d+), ([\d.]+)% failures", output)
    assert samples and int(samples[1]) > 0 and float(samples[2]) == 0, output[-4000:]
    for label in ("GET /v1/events/{id}", "POST /v1/events", "DELETE /v1/events/{id}"):
        assert label in output
