"""The hot path measured with wrk against the bare Falcon ASGI hello, in one run
(``invoke perf --only wrk``; needs the ``wrk`` binary: ``apt-get install wrk``).

Against the gateway at ``--url`` (a suite is started there, rate limit off, when none answers;
see perf/loadtest.py), in rounds that alternate with the hello so both see the same machine:

- ``hello``: ``GET /`` of perf/hello_app.py (uvicorn, one worker, the gateway's options);
- ``event-by-id``: ``GET /v1/events/{id}``, rotating over 100 real ids, same connections;
- ``create-event``: ``POST /v1/events`` as the admin at 10 connections, p99 from wrk --latency.

Prints a table and writes perf/results/bench_wrk.json: req/s, latency p50/p90/p99, non-2xx
responses and socket errors (connect, read, write, timeout) of every round, and the ratios
event-by-id / hello of each round.

    .venv/bin/python perf/bench_wrk.py [--url http://127.0.0.1:8000] [--connections 200]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

from loadtest import (  # noqa: E402
    RESULTS,
    _call,
    ensure_admin,
    ensure_events,
    hello_server,
    new_run_dir,
    suite_at,
)

GET_BY_ID_LUA = """
local ids = {%s}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/v1/events/" .. ids[(n %% #ids) + 1])
end
"""
POST_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
wrk.body = [[%s]]
"""
# Starts years ahead, so the GET scenarios' lists (sorted by start) never show these events.
EVENT_BODY = {
    "title": "wrk event",
    "topics": ["tech"],
    "starts_at": "2036-06-01T19:00:00+00:00",
    "place": {"name": "Bench Hall", "lat": 48.85, "lng": 2.35},
}
UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return round(float(number) * UNITS[unit], 3)


def parse_wrk(output: str) -> dict[str, float]:
    """The figures of one ``wrk --latency`` run."""
    figures: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])}
    figures["requests"] = int(re.search(r"(\d+) requests in", output)[1])
    for pct in ("50", "90", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", output, re.M)
        figures[f"p{pct}_ms"] = _ms(found[1]) if found else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    figures["non_2xx"] = int(non2xx[1]) if non2xx else 0
    sock = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    for i, kind in enumerate(("connect", "read", "write", "timeout"), start=1):
        figures[f"{kind}_errors"] = int(sock[i]) if sock else 0
    figures["errors"] = figures["non_2xx"] + sum(
        figures[f"{k}_errors"] for k in ("connect", "read", "write")
    )
    return figures


def wrk(url: str, connections: int, seconds: int, script: Path | None = None) -> dict:
    """Run wrk (2 threads, 5 s timeout) and parse what it printed."""
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "--latency"]
    if script:
        cmd += ["-s", str(script)]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed: {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def _line(name: str, f: dict) -> str:
    return (
        f"{name:<26}{f['rps']:>10,.0f}{f['p50_ms']:>10.1f}{f['p90_ms']:>10.1f}"
        f"{f['p99_ms']:>10.1f}{f['errors']:>8}{f['timeout_errors']:>9}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--post-connections", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): skipped")
        return 0
    url = args.url.rstrip("/")
    run_dir = new_run_dir(RESULTS, "wrk")
    rounds, scripts = [], Path(tempfile.mkdtemp(prefix="bench-wrk-"))
    with suite_at(url, run_dir, print) as target, hello_server(run_dir) as hello_url:
        admin = ensure_admin(target)
        ensure_events(target, admin, print)
        ids = [e["id"] for e in _call(f"{url}/v1/events?limit=100")[1]["items"]]
        login = {"username": admin[0], "password": admin[1]}
        token = _call(f"{url}/v1/auth/token", "POST", login)
        (scripts / "get.lua").write_text(GET_BY_ID_LUA % ", ".join(f'"{i}"' for i in ids))
        body = json.dumps(EVENT_BODY)
        (scripts / "post.lua").write_text(POST_LUA % (token[1]["access_token"], body))
        heads = ("req/s", "p50 ms", "p90 ms", "p99 ms")
        print(f"{'':<26}" + "".join(f"{h:>10}" for h in heads) + f"{'errors':>8}{'timeouts':>9}")
        for number in range(1, args.rounds + 1):
            hello = wrk(f"{hello_url}/", args.connections, args.seconds)
            by_id = wrk(f"{url}/v1/events/x", args.connections, args.seconds, scripts / "get.lua")
            create = wrk(
                f"{url}/v1/events", args.post_connections, args.seconds, scripts / "post.lua"
            )
            ratio = round(by_id["rps"] / hello["rps"], 3) if hello["rps"] else 0.0
            rounds.append(
                {"hello": hello, "event_by_id": by_id, "create_event": create, "ratio": ratio}
            )
            print(_line(f"{number}: hello c{args.connections}", hello))
            print(_line(f"{number}: GET event c{args.connections}", by_id))
            print(_line(f"{number}: POST event c{args.post_connections}", create))
            print(f"{number}: GET /v1/events/{{id}} / hello = {ratio:.3f}")
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "url": url,
        "suite_started_here": target.started_here,
        "notes": target.notes,
        "connections": args.connections,
        "post_connections": args.post_connections,
        "seconds": args.seconds,
        "rounds": rounds,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_wrk.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"Wrote {RESULTS / 'bench_wrk.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
