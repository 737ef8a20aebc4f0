"""Load sample events (``invoke populate``).

Through a running suite (default): an admin logs in at the gateway and POSTs each event, so
everything happens as for a real client (validation, outbox, ``event.created``).

Directly (``--direct``): the events go straight into the events store the services use
(``DATA_DIR``/``MONGODB_URL``), validated by the same rules, in bulk transactions; with an
``event.created`` outbox message each unless ``--no-outbox``.

    python -m devtools.populate --count 500 --username admin --password-stdin
    python -m devtools.populate --count 100000 --direct --no-outbox
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from devtools.samples import sample_events
from eventpost.contracts import EventCreated
from eventpost.ids import new_id
from eventpost.logs import configure_logging
from eventpost.settings import Settings
from eventpost.storage import open_store
from eventpost.timeutil import utcnow
from eventpost.validation import parse_model
from services.events.domain import EventIn, new_event, to_public
from services.events.store import EventsStore

log = logging.getLogger("devtools.populate")


def documents(bodies: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Stored documents of event bodies, validated like ``POST /v1/events``."""
    now = utcnow()
    for body in bodies:
        event = parse_model(json.dumps(body).encode(), EventIn)
        yield new_event(event, new_id(), now)


def created_messages(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The outbox message of a new event (``event.created``, as the service queues it)."""
    return [EventCreated(event=to_public(doc)).envelope().to_dict()]


def load_direct(
    events: EventsStore,
    bodies: Iterable[dict[str, Any]],
    *,
    outbox: bool = True,
    batch: int = 2000,
) -> int:
    """Insert events straight into the store, ``batch`` per transaction; how many."""
    total = 0
    chunk: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal total
        if not chunk:
            return
        events.insert_many(chunk, created_messages if outbox else None)
        total += len(chunk)
        chunk.clear()

    for doc in documents(bodies):
        chunk.append(doc)
        if len(chunk) >= batch:
            flush()
    flush()
    return total


def _request(url: str, method: str, body: Any = None, token: str | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for _ in range(20):
        # Only http(s) URLs of our own gateway come here.
        req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code == 429:  # the gateway's rate limit: wait as told
                time.sleep(float(exc.headers.get("Retry-After") or 1))
                continue
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"{method} {url}: {exc.code} {detail}") from None
    raise RuntimeError(f"{method} {url}: still rate limited")


def load_via_gateway(
    base_url: str,
    username: str,
    password: str,
    bodies: Iterable[dict[str, Any]],
    *,
    workers: int = 4,
) -> int:
    """POST every event through the gateway as the admin ``username``; how many."""
    token = _request(
        f"{base_url}/v1/auth/token", "POST", {"username": username, "password": password}
    )["access_token"]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(
            lambda body: _request(f"{base_url}/v1/events", "POST", body, token), bodies
        )
        return sum(1 for _ in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--days", type=int, default=180, help="spread of start dates")
    parser.add_argument("--direct", action="store_true", help="write into the store")
    parser.add_argument("--no-outbox", action="store_true", help="(--direct) no messages")
    parser.add_argument("--url", help="gateway base URL (default: 127.0.0.1:GATEWAY_PORT)")
    parser.add_argument("--username", help="an admin's username (through the gateway)")
    parser.add_argument("--password-stdin", action="store_true", help="read the password")
    args = parser.parse_args(argv)

    settings = Settings.from_env("events")
    configure_logging("populate", settings.log_level)
    bodies = sample_events(args.count, seed=args.seed, days=args.days)
    started = time.perf_counter()
    if args.direct:
        store = open_store(settings, "events")
        try:
            count = load_direct(EventsStore(store), bodies, outbox=not args.no_outbox)
        finally:
            store.close()
        where = "MongoDB" if settings.mongodb_url else str(settings.data_dir)
    else:
        if not args.username or not args.password_stdin:
            parser.error("through the gateway: --username and --password-stdin are needed")
        password = sys.stdin.readline().rstrip("\n")
        url = args.url or f"http://127.0.0.1:{settings.gateway_port}"
        count = load_via_gateway(url, args.username, password, bodies)
        where = url
    log.info(
        "loaded %d sample events into %s in %.1f s",
        count,
        where,
        time.perf_counter() - started,
        extra={"count": count},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
