"""CPU per ``GET /v1/events/{id}`` of the events app alone, called in-process (no server).

The events WSGI app on a fresh SQLite store in a temporary DATA_DIR, JSON logs at INFO into a
file, ``--events`` events created through the app; then ``--n`` GETs by id (rotating), each a
WSGI call with a new environ, timed by ``time.process_time`` (building the environ is
counted too, so the figure overstates the app a little). Set beside the CPU per request
that ``perf/bench_hotpath.py`` reads for the same request under gunicorn, it shows what the
server adds to the app.

    .venv/bin/python perf/bench_events_inprocess.py [--n 5000] [--events 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "perf"))


def main() -> None:
    """Create the events, then time the GETs (one line per round)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="GETs per round")
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="bench-events-inproc-")
    os.environ["DATA_DIR"] = data_dir
    import falcon.testing
    from bench_hotpath import new_event

    from devtools.http_doubles import TokenMint
    from eventpost.auth import KeySet
    from eventpost.logs import configure_logging
    from eventpost.settings import Settings
    from services.events.app import create_app

    report = sys.stdout
    sys.stdout = (Path(data_dir) / "events.log").open("w")  # the JSON log lines go here
    configure_logging("events", "INFO")
    mint = TokenMint()
    app = create_app(Settings.from_env("events"), verifier=KeySet(mint.jwks()))
    client = falcon.testing.TestClient(app)
    admin = {"Authorization": "Bearer " + mint.token("bench-admin", role="admin", ttl=3600)}
    paths = [
        "/v1/events/"
        + client.simulate_post("/v1/events", json=new_event(i), headers=admin).json["id"]
        for i in range(args.events)
    ]

    def get(path: str) -> None:
        status: list[str] = []
        environ = falcon.testing.create_environ(path=path, headers={"Host": "bench"})
        b"".join(app(environ, lambda line, headers, exc_info=None: status.append(line)))
        if not status[0].startswith("200"):
            raise SystemExit(f"GET {path}: {status[0]}")

    for path in paths:  # warm the read cache
        get(path)
    for round_no in range(1, args.rounds + 1):
        started = time.process_time()
        for k in range(args.n):
            get(paths[k % len(paths)])
        micros = (time.process_time() - started) / args.n * 1e6
        print(f"round {round_no}: {micros:.0f} us CPU per GET by id, in-process", file=report)
    sys.stdout.close()
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
