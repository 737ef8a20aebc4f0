"""Cost of access tokens: signing (users service, KeyRing) and verification with
eventpost.auth.KeySet, which the gateway and every service use (EdDSA/Ed25519, PyJWT).

    .venv/bin/python perf/bench_tokens.py [--runs 5000] [--json perf/results/bench_tokens.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventpost.auth import InvalidToken, KeySet
from services.users.keys import KeyRing, rotate_key_file


def us(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6, 1),
        "mean_us": round(statistics.fmean(ordered) * 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results/bench_tokens.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keys.json"
        ring = KeyRing(path)
        rotate_key_file(path, keep=2)  # two keys, as during a rotation
        ring.refresh(force=True)
        keyset = KeySet(ring.jwks())  # what the gateway builds from GET /v1/auth/jwks
        now = datetime.now(UTC)

        sign, tokens = [], []
        for i in range(args.runs):
            start = time.perf_counter()
            tokens.append(ring.access_token(f"user{i}", "user", now, 900))
            sign.append(time.perf_counter() - start)

        verify = []
        for token in tokens:
            start = time.perf_counter()
            keyset.verify(token)
            verify.append(time.perf_counter() - start)

        forged = [t[:-6] + "AAAAAA" for t in tokens[: args.runs // 5]]
        reject = []
        for token in forged:
            start = time.perf_counter()
            try:
                keyset.verify(token)
            except InvalidToken:
                pass
            else:
                raise AssertionError("a forged token verified")
            reject.append(time.perf_counter() - start)

        ring_verify = []
        for token in tokens[: args.runs // 5]:
            start = time.perf_counter()
            ring.verify(token)
            ring_verify.append(time.perf_counter() - start)

    results = {
        "token_bytes": len(tokens[0]),
        "sign_keyring": us(sign),
        "verify_keyset": us(verify),
        "reject_bad_signature_keyset": us(reject),
        "verify_keyring_users_service": us(ring_verify),
    }
    print(json.dumps(results, indent=2))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
