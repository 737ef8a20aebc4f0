"""Login cost of the users service with production argon2id parameters (argon2-cffi defaults).

In-process (the users service's WSGI app through falcon's test client, over a SQLite store in
a temporary directory, so no network noise), it measures:

- argon2 hash and verify alone;
- POST /v1/auth/token with the right password (p50, p99);
- unknown user vs wrong password: median times, interleaved so drift hits both alike, and
  their ratio (1.0 = indistinguishable). Throttling is lifted for this run (it would answer
  429 after 5 failures, which is the point of it, but not what is measured here).

    .venv/bin/python perf/bench_login.py [--runs 40] [--json perf/results/bench_login.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import falcon.testing
from argon2 import PasswordHasher

from eventpost.settings import Settings
from eventpost.storage.sqlite import SqliteStore
from services.users.app import create_app
from services.users.domain import ThrottlePolicy
from services.users.keys import KeyRing
from services.users.passwords import Passwords

PASSWORD = "correct horse battery"


def ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results/bench_login.json"))
    args = parser.parse_args()

    hasher = PasswordHasher()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "users.sqlite3")
        app = create_app(
            Settings(service="users", data_dir=Path(tmp)),
            store=store,
            keys=KeyRing(Path(tmp) / "keys.json"),
            passwords=Passwords(hasher),
            throttle=ThrottlePolicy(per_account=10**9, per_address=10**9, window=timedelta(0)),
        )
        client = falcon.testing.TestClient(app)
        resp = client.simulate_post(
            "/v1/users", json={"username": "alice", "email": "a@example.com", "password": PASSWORD}
        )
        assert resp.status_code == 201, resp.text

        stored = hasher.hash(PASSWORD)
        hash_times = [timed(lambda: hasher.hash(PASSWORD)) for _ in range(args.runs // 2)]
        verify_times = [
            timed(lambda: hasher.verify(stored, PASSWORD)) for _ in range(args.runs // 2)
        ]

        def login(username: str, password: str, status: int) -> float:
            body = {"username": username, "password": password}
            start = time.perf_counter()
            r = client.simulate_post("/v1/auth/token", json=body)
            elapsed = time.perf_counter() - start
            assert r.status_code == status, r.text
            return elapsed

        ok, wrong, unknown = [], [], []
        login("alice", PASSWORD, 200)  # warm-up
        for i in range(args.runs):
            ok.append(login("alice", PASSWORD, 200))
            order = [(wrong, "alice"), (unknown, f"nobody{i}")]
            if i % 2:
                order.reverse()
            for samples, username in order:
                samples.append(login(username, "wrong password!", 401))
        store.close()

    results = {
        "argon2": {
            "parameters": {
                "time_cost": hasher.time_cost,
                "memory_cost_kib": hasher.memory_cost,
                "parallelism": hasher.parallelism,
            },
            "hash": ms(hash_times),
            "verify": ms(verify_times),
        },
        "login_ok": ms(ok),
        "login_wrong_password": ms(wrong),
        "login_unknown_user": ms(unknown),
        "unknown_over_wrong_median_ratio": round(
            statistics.median(unknown) / statistics.median(wrong), 3
        ),
    }
    print(json.dumps(results, indent=2))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
