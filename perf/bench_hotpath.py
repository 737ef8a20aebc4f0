"""The hot path, measured with wrk in one run (``invoke perf --only hotpath``).

Starts, each on a free port:

- ``hello``: a bare Falcon ASGI hello under uvicorn, one worker, with the gateway's own server
  settings (httptools + uvloop, no access log): the yardstick;
- the real events service, started with the launcher's command (``devtools.launcher``, as
  ``invoke run`` runs it), on a fresh SQLite store in a temporary DATA_DIR, JSON logs at INFO;
- its outbox relay (``python -m eventpost.messaging.relay``) on a private exchange, as the
  suite runs it, when RabbitMQ answers (``--no-relay`` leaves it out);
- the real gateway (``python -m gateway``), its per-client rate limit off (every wrk connection
  comes from one address), JSON logs at INFO;
- a small stand-in for the users and notifications services (their ``/ready`` and the users
  JWKS, so tokens of a test key are accepted at the gateway and at events).

Then, with wrk (``apt-get install wrk``), for ``--duration`` seconds each:

- ``GET /`` of hello, ``GET /v1/events/{id}`` direct to events and through the gateway, at
  ``--connections`` (default 200) and at 10 connections (ids rotate over the seeded events);
- ``POST /v1/events`` (an admin token) direct and through the gateway at 10 connections.

The yardstick for the ratios is the hello GET through the same kind of wrk script as the GETs
by id (rotating over as many targets: wrk spends 15-20 % more CPU on a scripted request, on
the same two cores), run at the start and again at the end, the better of the two taken (a
slow minute on the shared machine must not shorten it); the ratio to the plain ``GET /`` of
the hello is printed too.

Prints a table (req/s, p50/p90/p99, errors and timeouts) and the ratios to the hello, and
writes perf/results/bench_hotpath.json. The machine is shared and has 2 cores: wrk, the gateway
and the service compete for them, so compare the ratios of one run, not absolute figures.

    .venv/bin/python perf/bench_hotpath.py [--duration 10] [--connections 200] [--events 50]
    .venv/bin/python perf/bench_hotpath.py --profile   # py-spy the gateway and events too
    # before/after in one run: the services of another checkout measured alongside
    git archive <commit> | tar -x -C /tmp/before && \\
        .venv/bin/python perf/bench_hotpath.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.http_doubles import TokenMint  # noqa: E402

RESULTS = ROOT / "perf" / "results"


def hello_app():
    """The yardstick: a bare Falcon ASGI app (``uvicorn --factory bench_hotpath:hello_app``)."""
    import falcon.asgi

    class Hello:
        async def on_get(self, req, resp):
            resp.content_type = falcon.MEDIA_TEXT
            resp.data = b"Hello, World!"

    app = falcon.asgi.App()
    app.add_route("/", Hello())
    return app


class _OtherServices(BaseHTTPRequestHandler):
    """``/ready`` of users and notifications, the users service's JWKS (set on the server)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/v1/auth/jwks":
            body = self.server.jwks  # type: ignore[attr-defined]
        elif self.path in ("/ready", "/health"):
            body = b'{"status":"ready"}'
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def new_event(i: int) -> dict:
    return {
        "title": f"Hot path meetup {i}",
        "description": "Talks and pizza.",
        "topics": ["bench", "python"],
        "starts_at": "2027-06-01T19:00:00Z",
        "place": {"name": "The Hall", "address": "1 Main St", "lat": 51.5, "lng": -0.12},
    }


def seed_events(base: str, token: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        request = urllib.request.Request(
            base + "/v1/events",
            data=json.dumps(new_event(i)).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            ids.append(json.loads(resp.read())["id"])
    return ids


def get_script(path: Path, ids: list[str]) -> Path:
    """A wrk script that GETs the events by id in turn."""
    return rotating_script(path, [f"/v1/events/{i}" for i in ids])


def rotating_script(path: Path, targets: list[str]) -> Path:
    """A wrk script that GETs ``targets`` in turn."""
    listed = ", ".join(f'"{target}"' for target in targets)
    path.write_text(
        f"local paths = {{{listed}}}\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  return wrk.format('GET', paths[(n % #paths) + 1])\n"
        "end\n"
    )
    return path


def post_script(path: Path, token: str) -> Path:
    """A wrk script that creates events (admin token)."""
    body = json.dumps(new_event(0)).replace("\\", "\\\\").replace('"', '\\"')
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{body}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return round(float(number) * _UNITS[unit], 3)


def parse_wrk(output: str) -> dict:
    """req/s, latency percentiles, errors and timeouts of a ``wrk --latency`` output."""
    result: dict = {"rps": 0.0, "errors": 0, "timeouts": 0, "non_2xx_3xx": 0}
    if found := re.search(r"Requests/sec:\s+([\d.]+)", output):
        result["rps"] = float(found.group(1))
    if found := re.search(r"(\d+) requests in", output):
        result["requests"] = int(found.group(1))
    for p in ("50", "90", "99"):
        if found := re.search(rf"^\s+{p}%\s+(\S+)", output, re.MULTILINE):
            result[f"p{p}_ms"] = _ms(found.group(1))
    if found := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        connect, read, write, timeout = map(int, found.groups())
        result["errors"] += connect + read + write
        result["timeouts"] = timeout
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        result["non_2xx_3xx"] = int(found.group(1))
        result["errors"] += int(found.group(1))
    return result


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children alive now (a gunicorn
    master and its workers), from /proc; 0 where /proc is not there."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return total
    return total + sum(cpu_seconds(int(child)) for child in children)


def wrk(url: str, connections: int, duration: int, threads: int, script: Path | None) -> dict:
    cmd = ["wrk", "--latency", f"-t{min(threads, connections)}", f"-c{connections}"]
    cmd += [f"-d{duration}s", "--timeout", "2s"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


class Suite:
    """The processes under test, their logs in ``workdir``."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def spawn(self, name: str, cmd: list[str], cwd: Path, **extra_env: str) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("wb")
        self.logs.append(log)
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**self.env, **extra_env}, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs[name] = proc
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs.values()):
            stop(proc)
        for log in self.logs:
            log.close()


def start(args: argparse.Namespace, workdir: Path, mint: TokenMint) -> tuple[Suite, dict]:
    """Start hello, the users stand-in, and events (with its relay) and the gateway of this
    checkout, and of ``--baseline`` too when given (bases ``events@before``...)."""
    others = ThreadingHTTPServer(("127.0.0.1", 0), _OtherServices)
    others.jwks = json.dumps(mint.jwks()).encode()  # type: ignore[attr-defined]
    threading.Thread(target=others.serve_forever, daemon=True).start()
    other_port = str(others.server_address[1])
    env = {
        **os.environ,
        "USERS_PORT": other_port,
        "NOTIFICATIONS_PORT": other_port,
        # Every wrk connection comes from one address and one admin: no rate limit.
        "GATEWAY_RATE_LIMIT": "0",
        "GATEWAY_USER_RATE_LIMIT": "0",
        "GATEWAY_ADMIN_RATE_LIMIT": "0",
        "LOG_LEVEL": "INFO",
    }
    env.pop("CONSUL_HTTP_ADDR", None)
    suite = Suite(workdir, env)
    py = sys.executable
    hello_port = free_port()
    hello = suite.spawn(
        "hello",
        [
            *(py, "-m", "uvicorn", "--factory", "bench_hotpath:hello_app", "--app-dir", "perf"),
            *("--port", str(hello_port), "--http", "httptools", "--loop", "uvloop"),
            *("--no-access-log", "--log-level", "warning", "--workers", "1"),
        ],
        cwd=ROOT,
    )
    bases = {"hello": f"http://127.0.0.1:{hello_port}"}
    wait_http(bases["hello"] + "/", hello)
    checkouts = {"": ROOT}
    if args.baseline:
        checkouts["@before"] = Path(args.baseline).resolve()
    for tag, root in checkouts.items():
        bases.update(start_checkout(args, suite, tag, root))
    return suite, bases


def service_command(root: Path, service: str, port: int) -> list[str]:
    """The command the launcher of the checkout ``root`` serves ``service`` with (a baseline
    from before granian has ``_gunicorn``)."""
    code = (
        "import json, devtools.launcher as l; "
        "f = getattr(l, 'service_command', None) or l._gunicorn; "
        f"print(json.dumps(f({service!r}, {port})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def start_checkout(args: argparse.Namespace, suite: Suite, tag: str, root: Path) -> dict:
    """Events (and its relay) and the gateway of the checkout ``root``, on its own store."""
    ports = {"events": free_port(), "gateway": free_port()}
    data = suite.workdir / (tag.strip("@") or "after")
    data.mkdir()
    env = {
        "DATA_DIR": str(data),
        "EVENTS_PORT": str(ports["events"]),
        "GATEWAY_PORT": str(ports["gateway"]),
        "PYTHONPATH": str(root),
    }
    py = sys.executable
    command = service_command(root, "events", ports["events"])
    events = suite.spawn(f"events{tag}", command, cwd=root, **env)
    wait_http(f"http://127.0.0.1:{ports['events']}/ready", events)
    if args.relay:
        relay = [py, "-m", "eventpost.messaging.relay", "--service", "events"]
        relay += ["--exchange", f"bench-hotpath-{uuid.uuid4().hex[:8]}"]
        suite.spawn(f"events-relay{tag}", relay, cwd=root, **env)
    gateway = suite.spawn(f"gateway{tag}", [py, "-m", "gateway"], cwd=root, **env)
    wait_http(f"http://127.0.0.1:{ports['gateway']}/ready", gateway)
    return {f"{name}{tag}": f"http://127.0.0.1:{port}" for name, port in ports.items()}


def profile(suite: Suite, tag: str, names: list[str], seconds: int, load) -> dict[str, dict]:
    """py-spy the parts ``names`` while ``load()`` runs; per part, the functions that were on
    the stack most often (share of samples) and the raw collapsed stacks' file."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        return {"error": {"py-spy": "not installed (pip install -e '.[perf]')"}}
    spies = {}
    for name in names:
        out = suite.workdir / f"profile-{tag}-{name}.txt"
        cmd = [str(spy), "record", "--subprocesses", "--nonblocking", "-p", str(suite.pid(name))]
        cmd += ["-d", str(seconds), "-f", "raw", "-o", str(out)]
        spies[name] = (
            out,
            subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        )
    load()
    found = {}
    for name, (out, proc) in spies.items():
        proc.wait()
        found[name] = {"stacks": str(out), "top": top_frames(out)} if out.exists() else {}
    return found


def top_frames(collapsed: Path, limit: int = 25) -> dict[str, float]:
    """The share of samples each function was on the stack in (collapsed stacks)."""
    counts: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for frame in {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}:
            counts[frame] = counts.get(frame, 0) + int(count)
    ranked = sorted(counts.items(), key=lambda item: -item[1])[:limit]
    return {frame: round(n / total, 3) for frame, n in ranked} if total else {}


def measure(
    args: argparse.Namespace, bases: dict, workdir: Path, mint: TokenMint, pids: dict[str, int]
) -> dict:
    """Every wrk run, in one go (this checkout's and the baseline's interleaved)."""
    admin = mint.token("bench-admin", role="admin", ttl=3600)
    tags = [tag for tag in ("", "@before") if f"events{tag}" in bases]
    gets = {}
    for tag in tags:
        ids = seed_events(bases[f"events{tag}"], admin, args.events)
        gets[tag] = get_script(workdir / f"get{tag}.lua", ids)
    posts = post_script(workdir / "post.lua", admin)
    for tag in tags:  # warm-up: connections, the JWKS, the read cache
        for part in ("events", "gateway"):
            wrk(bases[f"{part}{tag}"] + "/", 10, 2, args.threads, gets[tag])
    # The yardstick is GET by the same kind of wrk script as the GETs by id (rotating over as
    # many targets): a scripted request costs wrk 15-20 % more CPU than its static one, on
    # the cores the servers share. The plain GET / is kept beside it for reference.
    hello = rotating_script(workdir / "hello.lua", [f"/?i={i}" for i in range(args.events)])
    c = args.connections
    levels = list(dict.fromkeys((c, 10)))  # once each, also when --connections is 10
    plan = []
    for connections in levels:
        plan.append((f"hello GET / c={connections}", bases["hello"] + "/", connections, None))
        plan.append((f"hello GET /?i c={connections}", bases["hello"] + "/", connections, hello))
        for part in ("events", "gateway"):
            for tag in tags:
                name = f"{part}{tag} GET by id c={connections}"
                plan.append((name, bases[f"{part}{tag}"], connections, gets[tag]))
    for part in ("events", "gateway"):
        for tag in tags:
            plan.append((f"{part}{tag} POST c=10", bases[f"{part}{tag}"] + "/v1/events", 10, posts))
    # The hello once more at the end: a shared machine's slow minute must not make the
    # yardstick short (the ratios take the better of its two runs).
    for connections in levels:
        again = f"hello GET /?i c={connections}, again"
        plan.append((again, bases["hello"] + "/", connections, hello))
    runs: dict[str, dict] = {}
    for name, url, connections, script in plan:
        before = {part: cpu_seconds(pid) for part, pid in pids.items()}
        runs[name] = wrk(url, connections, args.duration, args.threads, script)
        done = max(1, runs[name].get("requests", 0))
        # CPU each part spent per request answered (the machine's 2 cores are the budget).
        runs[name]["cpu_us_per_request"] = {
            part: round((cpu_seconds(pid) - before[part]) / done * 1e6)
            for part, pid in pids.items()
            if cpu_seconds(pid) - before[part] > 0.05
        }
        cpu = " ".join(f"{k}={v}" for k, v in runs[name]["cpu_us_per_request"].items())
        print(f"  {name:<40} {runs[name]['rps']:>9.1f} req/s  CPU us/request: {cpu}", flush=True)
    return runs


def hello_rps(runs: dict, connections: int) -> float:
    """The yardstick at ``connections``: the better of the scripted hello's two runs."""
    return max(
        runs[name]["rps"]
        for name in (f"hello GET /?i c={connections}", f"hello GET /?i c={connections}, again")
        if name in runs
    )


def report(runs: dict, args: argparse.Namespace) -> dict:
    c = args.connections
    ratios, goals = {}, {}
    for tag in ("", "@before"):
        if f"gateway{tag} GET by id c={c}" not in runs:
            continue
        for part in ("gateway", "events"):
            for level in (c, 10):
                mine = runs[f"{part}{tag} GET by id c={level}"]["rps"]
                hello = hello_rps(runs, level)
                ratios[f"{part}{tag} GET by id / hello, c={level}"] = round(mine / hello, 3)
                plain = runs[f"hello GET / c={level}"]["rps"]
                ratios[f"{part}{tag} GET by id / plain GET / hello, c={level}"] = round(
                    mine / plain, 3
                )
        get, post = runs[f"gateway{tag} GET by id c={c}"], runs[f"gateway{tag} POST c=10"]
        goals[f"gateway{tag} GET by id >= 0.20 of hello at c={c}, 0 errors, 0 timeouts"] = (
            ratios[f"gateway{tag} GET by id / hello, c={c}"] >= 0.20
            and get["errors"] == 0
            and get["timeouts"] == 0
        )
        goals[f"gateway{tag} POST p99 <= 50 ms at c=10, 0 errors"] = (
            post.get("p99_ms", 1e9) <= 50 and post["errors"] == 0 and post["timeouts"] == 0
        )
    heads = f"{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'err':>6}{'t/o':>6}"
    print(f"\n{'scenario':<40}{heads}")
    for name, st in runs.items():
        print(
            f"{name:<40}{st['rps']:>10.1f}{st.get('p50_ms', 0):>9.2f}{st.get('p90_ms', 0):>9.2f}"
            f"{st.get('p99_ms', 0):>9.2f}{st['errors']:>6}{st['timeouts']:>6}"
        )
    print()
    for name, value in ratios.items():
        print(f"{name:<50}{value:>8.3f}")
    for name, ok in goals.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return {"ratios": ratios, "goals": goals}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--events", type=int, default=50, help="events to seed and GET")
    parser.add_argument("--no-relay", dest="relay", action="store_false")
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help="also run events and the gateway of another checkout (e.g. a worktree of the "
        "commit before), measured in the same run (names @before)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the suite under load")
    parser.add_argument("--json", default=str(RESULTS / "bench_hotpath.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get install -y -q wrk)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    args.relay = args.relay and reachable("127.0.0.1", 5672)
    mint = TokenMint()
    workdir = Path(tempfile.mkdtemp(prefix="bench-hotpath-"))
    results: dict = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    results["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
    suite, bases = start(args, workdir, mint)
    try:
        pids = {name: proc.pid for name, proc in suite.procs.items()}
        results["runs"] = measure(args, bases, workdir, mint, pids)
        if args.profile:
            results["profiles"] = {
                f"{what} through the gateway": profile(
                    suite,
                    what,
                    ["events", "gateway"],  # this checkout's
                    args.duration,
                    lambda c=connections, s=script: wrk(
                        bases["gateway"] + "/v1/events", c, args.duration, args.threads, s
                    ),
                )
                for what, connections, script in (
                    ("GET", args.connections, workdir / "get.lua"),
                    ("POST", 10, workdir / "post.lua"),
                )
            }
    finally:
        suite.close()
    results["load_average_at_end"] = os.getloadavg()
    results.update(report(results["runs"], args))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {out} (logs in {workdir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
