"""What the API gateway adds to a request (``invoke perf-gateway``).

Starts a tiny upstream (a minimal Falcon WSGI app under granian, 1 worker, 8 threads, as the
services run) and the real gateway (``python -m gateway`` under uvicorn, rate limit off, JSON
logs on as in production, to a file), then measures with a keep-alive aiohttp client at
concurrency 1 and 10:

- ``direct``: ``GET /v1/events`` straight to the upstream;
- ``gateway``: the same through the gateway;
- ``gateway+token``: through the gateway with a valid bearer token (EdDSA verify at the edge,
  then remembered until exp).

The gateway runs once per uvicorn HTTP implementation asked for (``--server``): ``h11`` (pure
Python, asyncio) and ``httptools`` (C parser, with uvloop; uvicorn[standard]).

and reports p50/p99 latency (client side: request sent to body read), throughput, and the
ratios gateway/direct. Also measured in the same run:

- the upstream client alone: the gateway's own (``gateway.upstream_http``), aiohttp and httpx
  (``httpx.AsyncClient``) calling the upstream directly, same concurrency (issue 2 says httpx
  was measured ~17x slower; the gateway used aiohttp's client until it got its own);
- token verification alone (``eventpost.auth.KeySet.verify``), microseconds per token;
- the gateway's own view: mean of ``gateway_overhead_seconds`` from its /metrics.

The machine is shared and has 2 cores: the load client, the gateway and the upstream compete
for them, so absolute numbers are indicative; the ratios are what to compare.

    .venv/bin/python perf/bench_gateway.py [--requests 2000] [--server h11,httptools]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from devtools.http_doubles import TokenMint  # noqa: E402
from eventpost.auth import KeySet  # noqa: E402

JWKS_ENV = "BENCH_JWKS_FILE"


def tiny_app():
    """The upstream: a minimal Falcon WSGI app (granian loads ``bench_gateway:tiny_app``)."""
    import falcon

    body = json.dumps(
        {"items": [{"id": "e1", "title": "Tiny event", "topics": ["bench"]}], "next_cursor": None}
    ).encode()

    class Tiny:
        def on_get(self, req, resp, **_):
            resp.content_type = falcon.MEDIA_JSON
            resp.data = body

    class Jwks:
        def on_get(self, req, resp):
            resp.content_type = falcon.MEDIA_JSON
            resp.data = Path(os.environ[JWKS_ENV]).read_bytes()

    app = falcon.App()
    app.add_route("/health", Tiny())
    app.add_route("/ready", Tiny())
    app.add_route("/v1/auth/jwks", Jwks())
    app.add_route("/v1/events", Tiny())
    app.add_route("/v1/users", Tiny())
    app.add_route("/v1/notifications", Tiny())
    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summarize(latencies: list[float], seconds: float) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(p99 * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "rps": round(len(ordered) / seconds, 1),
    }


async def drive(
    send: Callable[[], Awaitable[int]], requests: int, concurrency: int
) -> dict[str, float]:
    """Send ``requests`` requests with ``concurrency`` workers; every answer must be 200."""
    for _ in range(min(200, requests // 5)):  # warm-up: connections, caches, JWKS
        assert await send() == 200
    latencies: list[float] = []
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            status = await send()
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"got {status}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(latencies, time.perf_counter() - started)


async def with_aiohttp(url: str, headers: dict[str, str], requests: int, concurrency: int):
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=1.0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> int:
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                return resp.status

        return await drive(send, requests, concurrency)


async def with_httpx(url: str, headers: dict[str, str], requests: int, concurrency: int):
    import httpx

    limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=1.0)
    async with httpx.AsyncClient(limits=limits) as client:

        async def send() -> int:
            resp = await client.get(url, headers=headers)
            return resp.status_code

        return await drive(send, requests, concurrency)


async def with_gateway_client(url: str, headers: dict[str, str], requests: int, concurrency: int):
    from urllib.parse import urlsplit

    from gateway.upstream_http import UpstreamHttp

    parts = urlsplit(url)
    base, target = f"{parts.scheme}://{parts.netloc}", parts.path or "/"
    http = UpstreamHttp(limit=concurrency)

    async def send() -> int:
        answer = await http.request(
            base, "GET", target, headers, connect_timeout=2.0, total_timeout=10.0
        )
        return answer.status

    try:
        return await drive(send, requests, concurrency)
    finally:
        await http.close()


def verify_cost(mint: TokenMint, rounds: int = 3000) -> float:
    """Microseconds per KeySet.verify of a valid token."""
    keys = KeySet(mint.jwks())
    token = mint.token("bench-user")
    keys.verify(token)
    started = time.perf_counter()
    for _ in range(rounds):
        keys.verify(token)
    return round((time.perf_counter() - started) / rounds * 1e6, 1)


def gateway_overhead(gateway: str) -> float | None:
    """Mean of the gateway's own gateway_overhead_seconds, in ms."""
    with urllib.request.urlopen(gateway + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        for name in ("gateway_overhead_seconds_sum", "gateway_overhead_seconds_count"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    count = values.get("gateway_overhead_seconds_count")
    if not count:
        return None
    return round(values["gateway_overhead_seconds_sum"] / count * 1000, 3)


SERVERS = {"h11": ("h11", "asyncio"), "httptools": ("httptools", "uvloop")}


def ratio(table, name: str, c: int) -> dict[str, float]:
    mine, direct = table[name][c], table["direct"][c]
    return {
        "p50": round(mine["p50_ms"] / direct["p50_ms"], 2),
        "p99": round(mine["p99_ms"] / direct["p99_ms"], 2),
        "throughput": round(mine["rps"] / direct["rps"], 2),
        "added_p50_ms": round(mine["p50_ms"] - direct["p50_ms"], 3),
    }


def print_table(title: str, table) -> None:
    print(title)
    print(f"{'scenario':<26}{'c':>3}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for name, levels in table.items():
        for c, st in levels.items():
            print(f"{name:<26}{c:>3}{st['p50_ms']:>10}{st['p99_ms']:>10}{st['rps']:>10}")
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per scenario and level")
    parser.add_argument("--json", default=str(ROOT / "perf" / "results" / "bench_gateway.json"))
    parser.add_argument("--no-httpx", action="store_true", help="skip the client comparison")
    parser.add_argument(
        "--server",
        default="h11,httptools",
        help="uvicorn HTTP implementations to run the gateway with, comma-separated: h11 "
        "(pure Python, asyncio loop) and/or httptools (with uvloop; needs both installed)",
    )
    args = parser.parse_args()
    servers = [name.strip() for name in args.server.split(",") if name.strip()]
    for name in servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}")
        if name == "httptools":
            try:
                import httptools  # noqa: F401
                import uvloop  # noqa: F401
            except ImportError:
                print("httptools/uvloop not installed: measuring h11 only", file=sys.stderr)
                servers.remove(name)

    mint = TokenMint()
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    jwks_file = workdir / "jwks.json"
    jwks_file.write_text(json.dumps(mint.jwks()))
    up_port = free_port()
    env = {
        **os.environ,
        JWKS_ENV: str(jwks_file),
        "USERS_PORT": str(up_port),
        "EVENTS_PORT": str(up_port),
        "NOTIFICATIONS_PORT": str(up_port),
        "GATEWAY_RATE_LIMIT": "0",
        "DATA_DIR": str(workdir),
    }
    env.pop("CONSUL_HTTP_ADDR", None)
    logs = []
    procs: list[subprocess.Popen] = []

    def spawn(cmd: list[str], log_name: str, extra_env: dict[str, str] | None = None):
        log = (workdir / log_name).open("wb")
        logs.append(log)
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT
        )
        procs.append(proc)
        return proc

    upstream = spawn(
        [
            *(sys.executable, "-m", "granian", "--interface", "wsgi", "--factory"),
            *("--workers", "1", "--blocking-threads", "8", "--port", str(up_port)),
            *("--working-dir", str(ROOT / "perf"), "--log-level", "warning"),
            "bench_gateway:tiny_app",
        ],
        "upstream.log",
    )
    gateways: dict[str, str] = {}
    results: dict[str, object] = {
        "requests_per_scenario": args.requests,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    try:
        wait_http(f"http://127.0.0.1:{up_port}/health", upstream)
        for name in servers:
            port = free_port()
            http, loop = SERVERS[name]
            proc = spawn(
                [sys.executable, "-m", "gateway", "--http", http, "--loop", loop],
                f"gateway-{name}.log",
                {"GATEWAY_PORT": str(port)},
            )
            gateways[name] = f"http://127.0.0.1:{port}"
            wait_http(gateways[name] + "/ready", proc)

        token = {"Authorization": f"Bearer {mint.token('bench-user', ttl=3600)}"}
        direct = f"http://127.0.0.1:{up_port}/v1/events"
        scenarios: dict[str, tuple[str, dict[str, str]]] = {"direct": (direct, {})}
        for name, base in gateways.items():
            scenarios[f"gateway[{name}]"] = (base + "/v1/events", {})
            scenarios[f"gateway[{name}]+token"] = (base + "/v1/events", token)
        table: dict[str, dict[int, dict[str, float]]] = {}
        for concurrency in (1, 10):
            for name, (url, headers) in scenarios.items():
                stats = asyncio.run(with_aiohttp(url, headers, args.requests, concurrency))
                table.setdefault(name, {})[concurrency] = stats
        results["scenarios"] = table
        results["ratios vs direct"] = {
            f"{name} c={c}": ratio(table, name, c)
            for name in scenarios
            if name != "direct"
            for c in (1, 10)
        }
        results["gateway_overhead_mean_ms (its own metric)"] = {
            name: gateway_overhead(base) for name, base in gateways.items()
        }
        results["token_verify_us (KeySet.verify, uncached)"] = verify_cost(mint)

        if not args.no_httpx:
            try:
                import httpx  # noqa: F401
            except ImportError:
                results["clients"] = "httpx not installed (pip install httpx==0.28.1)"
            else:
                clients: dict[str, dict[int, dict[str, float]]] = {}
                for concurrency in (1, 10):
                    for name, runner in (
                        ("gateway.upstream_http", with_gateway_client),
                        ("aiohttp", with_aiohttp),
                        ("httpx", with_httpx),
                    ):
                        clients.setdefault(name, {})[concurrency] = asyncio.run(
                            runner(direct, {}, args.requests, concurrency)
                        )
                results["clients"] = clients
                results["client ratios httpx/aiohttp"] = {
                    f"c={c}": {
                        "p50": round(
                            clients["httpx"][c]["p50_ms"] / clients["aiohttp"][c]["p50_ms"], 2
                        ),
                        "throughput": round(
                            clients["httpx"][c]["rps"] / clients["aiohttp"][c]["rps"], 2
                        ),
                    }
                    for c in (1, 10)
                }
                results["client ratios aiohttp/gateway.upstream_http"] = {
                    f"c={c}": {
                        "p50": round(
                            clients["aiohttp"][c]["p50_ms"]
                            / clients["gateway.upstream_http"][c]["p50_ms"],
                            2,
                        ),
                        "throughput": round(
                            clients["aiohttp"][c]["rps"]
                            / clients["gateway.upstream_http"][c]["rps"],
                            2,
                        ),
                    }
                    for c in (1, 10)
                }
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()

    print_table("through the gateway vs direct (aiohttp load client)", results["scenarios"])
    if isinstance(results.get("clients"), dict):
        print_table("upstream client alone, direct to the upstream", results["clients"])
    summary = {k: v for k, v in results.items() if k not in ("scenarios", "clients")}
    print(json.dumps(summary, indent=2))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
