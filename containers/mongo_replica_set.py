"""Make the MongoDB at MONGODB_URL a single-node replica set and wait until it is the writable
primary, so multi-document transactions work (CI starts a bare ``mongod --replSet rs0``).

Usage (after ``invoke install``): ``.venv/bin/python containers/mongo_replica_set.py``.
Idempotent: a set already initiated is left as it is. Exits non-zero after ``--timeout``
seconds without a primary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from urllib.parse import urlparse


def initiate(url: str, timeout: float) -> None:
    """Initiate the replica set named in ``url`` (``replicaSet=``, default rs0) with the one
    member that ``url`` names, then wait for it to become primary."""
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    parsed = urlparse(url)
    host = f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 27017}"
    name = "rs0"
    for pair in parsed.query.split("&"):
        key, _, value = pair.partition("=")
        if key == "replicaSet" and value:
            name = value
    client = MongoClient(host, directConnection=True, serverSelectionTimeoutMS=2000)
    deadline = time.monotonic() + timeout
    initiated = False
    while time.monotonic() < deadline:
        try:
            if not initiated:
                try:
                    config = {"_id": name, "members": [{"_id": 0, "host": host}]}
                    client.admin.command("replSetInitiate", config)
                except OperationFailure as exc:
                    if exc.code != 23:  # 23: AlreadyInitialized
                        raise
                initiated = True
            if client.admin.command("hello").get("isWritablePrimary"):
                sys.stdout.write(f"replica set {name} on {host}: primary\n")
                return
        except PyMongoError as exc:
            sys.stderr.write(f"waiting for MongoDB at {host}: {exc}\n")
        time.sleep(1)
    raise SystemExit(f"no primary of replica set {name} at {host} within {timeout:.0f} s")


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("MONGODB_URL", ""))
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if not args.url:
        raise SystemExit("give --url or set MONGODB_URL")
    initiate(args.url, args.timeout)


if __name__ == "__main__":
    main()
