"""Gateway tasks: perf-gateway (what the gateway adds to a request), gateway (run it alone).

Only invoke and the standard library are imported here (see tasks/core.py)."""

from __future__ import annotations

import shlex

from invoke import task

from tasks.core import ROOT, VENV_PY, ensure_installed


@task(
    name="perf-gateway",
    help={
        "requests": "requests per scenario and concurrency level (default 2000)",
        "server": "uvicorn HTTP implementations to compare: h11, httptools (default both)",
        "no_httpx": "skip the aiohttp vs httpx client comparison",
    },
)
def perf_gateway(c, requests=2000, server="h11,httptools", no_httpx=False):
    """Latency p50/p99 and throughput direct vs through the gateway at concurrency 1 and 10
    (tiny granian upstream), aiohttp vs httpx as the upstream client, token verify cost.
    Writes perf/results/bench_gateway.json."""
    ensure_installed(c)
    cmd = [
        str(VENV_PY), str(ROOT / "perf" / "bench_gateway.py"),
        "--requests", str(int(requests)), "--server", server,
    ]  # fmt: skip
    if no_httpx:
        cmd.append("--no-httpx")
    c.run(shlex.join(cmd), pty=False)


@task(name="gateway")
def gateway(c):
    """Run the gateway alone in the foreground (GATEWAY_HOST:GATEWAY_PORT, upstreams at the
    static addresses or through Consul); Ctrl-C stops it."""
    ensure_installed(c)
    c.run(shlex.join([str(VENV_PY), "-m", "gateway"]), pty=False)
