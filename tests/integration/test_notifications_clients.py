"""The notifications service's calls to the users and events services, over real HTTP to a
small local server: headers forwarded, answers mapped, timeouts and outages become 503."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eventpost.discovery import Discovery
from eventpost.errors import Unauthenticated, Unavailable
from services.notifications.clients import HttpUpstreams, UnknownEvent


class Upstream(BaseHTTPRequestHandler):
    """Answers like the users and events services would; ``/v1/events/slow`` hangs."""

    seen: list[dict[str, str]] = []

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        Upstream.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        if self.path == "/v1/events/ev1":
            self._json(200, {"id": "ev1", "title": "T", "starts_at": "2030-01-01T00:00:00Z"})
        elif self.path == "/v1/events/boom":
            self._json(500, {"title": "Internal Server Error"})
        elif self.path == "/v1/events/slow":
            time.sleep(1.5)
            self._json(200, {})
        elif self.path == "/v1/users/me":
            if self.headers.get("Authorization") == "Bearer good":
                self._json(200, {"id": "u1", "email": "a@example.com", "secondary_emails": []})
            else:
                self._json(401, {"title": "Unauthorized"})
        else:
            self._json(404, {"title": "Not Found"})


class At(Discovery):
    def __init__(self, url: str) -> None:
        self.base = url

    def instances(self, service: str) -> list[str]:
        return [self.base]


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Upstream.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_event_found_and_request_id_forwarded(upstream):
    client = HttpUpstreams(At(upstream))
    assert client.get_event("ev1", request_id="rid-7")["title"] == "T"
    assert Upstream.seen[-1]["x-request-id"] == "rid-7"
    assert "authorization" not in Upstream.seen[-1]


def test_unknown_or_odd_event_ids(upstream):
    client = HttpUpstreams(At(upstream))
    with pytest.raises(UnknownEvent):
        client.get_event("nope", request_id=None)
    before = len(Upstream.seen)
    for odd in ("../users/me", "a/b", "x" * 500, ""):
        with pytest.raises(UnknownEvent):
            client.get_event(odd, request_id=None)
    assert len(Upstream.seen) == before  # never sent upstream


def test_callers_token_is_forwarded_to_users(upstream):
    client = HttpUpstreams(At(upstream))
    me = client.get_me("Bearer good", request_id="rid-8")
    assert me["email"] == "a@example.com"
    assert Upstream.seen[-1]["authorization"] == "Bearer good"
    assert Upstream.seen[-1]["x-request-id"] == "rid-8"
    with pytest.raises(Unauthenticated) as err:
        client.get_me("Bearer revoked", request_id=None)
    assert err.value.headers == {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def test_upstream_errors_timeouts_and_outages_are_503(upstream):
    client = HttpUpstreams(At(upstream), timeout=0.3)
    for event_id in ("boom", "slow"):
        with pytest.raises(Unavailable) as err:
            client.get_event(event_id, request_id=None)
        assert err.value.headers == {"Retry-After": "2"}
    down = HttpUpstreams(At("http://127.0.0.1:9"), timeout=0.3)
    with pytest.raises(Unavailable):
        down.get_me("Bearer good", request_id=None)


class Listed(Discovery):
    def __init__(self, *urls: str) -> None:
        self.urls = list(urls)

    def instances(self, service: str) -> list[str]:
        return list(self.urls)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_instance_that_cannot_be_reached_is_skipped_for_the_next_one(upstream):
    dead = f"http://127.0.0.1:{_closed_port()}"
    client = HttpUpstreams(Listed(dead, upstream))
    # Whichever comes first in the rotation, every call is answered.
    for _ in range(4):
        assert client.get_event("ev1", request_id=None)["id"] == "ev1"
    assert len(Upstream.seen) == 4
    # A slow instance is not retried elsewhere (a second wait would double the delay).
    other_name = upstream.replace("127.0.0.1", "localhost")  # the same server, another URL
    slow = HttpUpstreams(Listed(upstream, other_name), timeout=0.3)
    with pytest.raises(Unavailable):
        slow.get_event("slow", request_id=None)
    assert sum(1 for s in Upstream.seen if s["path"] == "/v1/events/slow") == 1
