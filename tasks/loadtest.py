"""Load-test task: loadtest (the seed's Taurus scenarios run with Locust, with a report).

Only invoke and the standard library are imported here (see tasks/core.py); the load tools
(the ``perf`` extras of pyproject.toml: Locust, bzt) are installed into .venv on first use."""

from __future__ import annotations

import shlex
import subprocess
import tomllib

from invoke import task

from tasks.core import ROOT, VENV_PY, ensure_installed, ensure_rabbitmq


def perf_requirements() -> list[str]:
    """The pinned ``perf`` extras of pyproject.toml (Locust, bzt)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["optional-dependencies"]["perf"])


def ensure_perf_tools(c) -> None:
    """Install the ``perf`` extras into .venv unless they are there already."""
    wanted = perf_requirements()
    pins = [tuple(r.split("==")) for r in wanted]
    # Exits non-zero when one is missing (PackageNotFoundError) or at another version.
    code = (
        "import importlib.metadata as m; "
        f"raise SystemExit(any(m.version(n) != v for n, v in {pins!r}))"
    )
    if subprocess.run([str(VENV_PY), "-c", code], capture_output=True).returncode == 0:
        return
    print("Installing the load-test tools into .venv: " + ", ".join(wanted), flush=True)
    c.run(shlex.join([str(VENV_PY), "-m", "pip", "install", "-q", *wanted]), pty=False)


@task(
    help={
        "scenario": "events (default), notifications or suite (both services at once)",
        "users": "concurrent users (default 10: the seed's 7 GET + 3 POST-PUT-DELETE); several "
        "(10,100,200,500): one run each on the same suite, and a table of them",
        "duration": "seconds of load (default 30)",
        "url": "the gateway (default http://127.0.0.1:GATEWAY_PORT); a suite is started "
        "there when none answers",
    }
)
def loadtest(c, scenario="events", users="10", duration=30, url=""):
    """Run a seed load-test scenario through the gateway and write an HTML report with plots
    and a JSON summary under perf/results/ (with a bare Falcon hello measured alongside)."""
    ensure_installed(c)
    ensure_perf_tools(c)
    ensure_rabbitmq(c)
    cmd = [
        str(VENV_PY), str(ROOT / "perf" / "loadtest.py"), "--scenario", scenario,
        "--users", str(users), "--duration", str(int(duration)),
    ]  # fmt: skip
    if url:
        cmd += ["--url", url]
    c.run(shlex.join(cmd), pty=False)
