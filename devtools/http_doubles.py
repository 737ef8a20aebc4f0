"""Helpers to run the gateway and stand-in upstreams over real HTTP, for tests and the benchmark.

- :class:`UvicornThread` serves an ASGI app (the gateway) with uvicorn in a thread, on a free
  port of 127.0.0.1, lifespan included.
- :class:`AiohttpThread` serves an :class:`aiohttp.web.Application` in a thread likewise.
- :class:`FakeUpstream` is a small aiohttp service that records what reached it, echoes it, and
  can be told to be unready, hang, drop connections or answer a given status; it also serves a
  JWKS at ``/v1/auth/jwks`` like the users service.
- :class:`TokenMint` makes Ed25519 keys and signs access tokens the way the users service does.
- :func:`start_gateway_process` runs ``python -m gateway`` as a real process in front of them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import falcon.asgi
import jwt
import uvicorn
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from eventpost.auth import AUDIENCE, ISSUER
from eventpost.discovery import Discovery
from eventpost.settings import Settings
from gateway.app import UVICORN_OPTIONS, create_app
from gateway.ratelimit import EdgePolicy, RateLimiter
from gateway.upstreams import UpstreamPolicy

ROOT = Path(__file__).resolve().parents[1]


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on a free port of ``host``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class UvicornThread:
    """Runs an ASGI app under uvicorn in a background thread (``with UvicornThread(app) as s``,
    then ``s.url``), with the gateway's server options (the peer address is never taken from
    proxy headers)."""

    def __init__(self, app: Any, *, graceful_timeout: float = 2.0) -> None:
        self.sock = bound_socket()
        host, port = self.sock.getsockname()
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(app, timeout_graceful_shutdown=graceful_timeout, **UVICORN_OPTIONS)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> UvicornThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AiohttpThread:
    """Serves an aiohttp application in a background thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.sock = bound_socket()
        host, port = self.sock.getsockname()
        self.url = f"http://{host}:{port}"
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def setup() -> None:
            self._runner = web.AppRunner(
                self.app, shutdown_timeout=0.2, handler_cancellation=True, access_log=None
            )
            await self._runner.setup()
            await web.SockSite(self._runner, self.sock).start()

        self.loop.run_until_complete(setup())
        self._ready.set()
        self.loop.run_forever()
        assert self._runner is not None
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def start(self) -> AiohttpThread:
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the aiohttp server did not start")
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> AiohttpThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Seen:
    """One request as the fake upstream received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeUpstream:
    """A stand-in service. Paths it knows, under any prefix:

    - ``GET /ready`` answers ``ready_status``;
    - ``GET /v1/auth/jwks`` answers ``jwks`` (and counts ``jwks_fetches``);
    - ``.../hang`` sleeps ``hang_seconds`` before answering;
    - ``.../drop`` closes the connection without answering while ``drops_left`` > 0;
    - ``.../status/<code>`` answers that status with ``WWW-Authenticate``/``Retry-After``;
    - anything else echoes the request as JSON, with an ``ETag`` and a ``Location``.
    Every request except ``/ready`` and the JWKS is appended to ``seen``."""

    name: str = "upstream"
    ready_status: int = 200
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    jwks_fetches: int = 0
    hang_seconds: float = 30.0
    drops_left: int = 0
    seen: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def hits(self, suffix: str) -> int:
        """How many recorded requests had a path ending in ``suffix``."""
        return sum(1 for s in self.seen if s.path.endswith(suffix))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        if path == "/ready":
            return web.json_response({"ready": self.ready_status == 200}, status=self.ready_status)
        if path == "/v1/auth/jwks":
            self.jwks_fetches += 1
            return web.json_response(self.jwks)
        body = await request.read()
        self.seen.append(Seen(request.method, path, query, dict(request.headers), body))
        if path.endswith("/hang"):
            await asyncio.sleep(self.hang_seconds)
        if path.endswith("/drop") and self.drops_left > 0:
            self.drops_left -= 1
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError
        parts = path.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "status":
            return web.json_response(
                {"status": int(parts[-1])},
                status=int(parts[-1]),
                headers={"WWW-Authenticate": "Bearer", "Retry-After": "7"},
            )
        return web.json_response(
            {
                "upstream": self.name,
                "method": request.method,
                "path": path,
                "query": query,
                "body": body.decode("utf-8", "replace"),
                "headers": dict(request.headers),
            },
            headers={
                "ETag": '"v1"',
                "Location": path + "/new",
                "X-Request-ID": request.headers.get("X-Request-ID", ""),
                "Keep-Alive": "timeout=5",
                "X-Upstream-Secret": "internal",
            },
        )


class TokenMint:
    """Signs access tokens with a fresh Ed25519 key, like the users service does."""

    def __init__(self, kid: str | None = None) -> None:
        self.kid = kid or uuid.uuid4().hex[:12]
        self.key = Ed25519PrivateKey.generate()

    def jwk(self) -> dict[str, Any]:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": "EdDSA"})
        return jwk

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk()]}

    def token(
        self,
        sub: str = "user-1",
        role: str = "user",
        *,
        ttl: float = 300,
        now: Callable[[], float] = time.time,
        kid: str | None = None,
        **claims: Any,
    ) -> str:
        issued = int(now())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "role": role,
            "iat": issued,
            "exp": issued + int(ttl),
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        return jwt.encode(payload, self.key, algorithm="EdDSA", headers={"kid": kid or self.kid})


class ManualClock:
    """A monotonic clock that moves only when told (``clock.advance(seconds)``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Answer:
    """A plain HTTP answer (status, headers, body)."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def call(
    base: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    chunked: bool = False,
) -> Answer:
    """One HTTP request to ``base`` (``http://host:port``) on a fresh connection; ``path`` is
    sent exactly as given. ``chunked`` sends the body without a Content-Length."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        if chunked:
            conn.request(
                method, path, body=iter([body or b""]), headers=headers or {}, encode_chunked=True
            )
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (just released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


class FakeServices:
    """Three :class:`FakeUpstream` servers (users, events, notifications) in threads; the users
    one serves the JWKS of ``mint``. Use as a context manager."""

    NAMES = ("users", "events", "notifications")

    def __init__(self) -> None:
        self.mint = TokenMint()
        self.fakes = {name: FakeUpstream(name) for name in self.NAMES}
        self.servers: dict[str, AiohttpThread] = {}
        self.reset()

    @property
    def users(self) -> FakeUpstream:
        return self.fakes["users"]

    @property
    def events(self) -> FakeUpstream:
        return self.fakes["events"]

    @property
    def notifications(self) -> FakeUpstream:
        return self.fakes["notifications"]

    def ports(self) -> dict[str, int]:
        return {name: int(s.url.rsplit(":", 1)[1]) for name, s in self.servers.items()}

    def reset(self) -> None:
        """Forget what was seen and undo every fault."""
        for fake in self.fakes.values():
            fake.seen.clear()
            fake.ready_status = 200
            fake.drops_left = 0
            fake.jwks_fetches = 0
        self.users.jwks = self.mint.jwks()

    def __enter__(self) -> FakeServices:
        for name, fake in self.fakes.items():
            self.servers[name] = AiohttpThread(fake.app()).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers.values():
            server.stop()


@contextmanager
def running_gateway(
    services: FakeServices,
    *,
    ports: Mapping[str, int] | None = None,
    clock: Callable[[], float] | None = None,
    policies: Mapping[str, UpstreamPolicy] | None = None,
    jwks_min_refetch: float = 5.0,
    discovery: Discovery | None = None,
    address_limiter: RateLimiter | None = None,
    rate_policy: EdgePolicy | None = None,
    registry: CollectorRegistry | None = None,
    **changes: Any,
) -> Iterator[tuple[str, falcon.asgi.App]]:
    """A gateway under uvicorn in front of ``services`` (``ports`` overrides some upstream
    ports; ``changes`` are Settings fields); yields ``(base_url, app)``."""
    settings = Settings(service="gateway").with_(
        service_ports={"gateway": 0, **services.ports(), **(ports or {})}, **changes
    )
    app = create_app(
        settings,
        discovery=discovery,
        clock=clock or ManualClock(),
        policies=policies,
        jwks_min_refetch=jwks_min_refetch,
        address_limiter=address_limiter,
        rate_policy=rate_policy,
        registry=registry,
    )
    with UvicornThread(app) as server:
        yield server.url, app


def start_gateway_process(
    services: FakeServices,
    data_dir: Path,
    *,
    graceful_timeout: float = 5.0,
    start_timeout: float = 30.0,
    **env: str,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``python -m gateway`` as a real process in front of ``services`` (Consul unset, ``env``
    added to the environment), once its /health answers; returns ``(process, base_url,
    log_path)``: stdout and stderr go to ``data_dir/gateway.log``. The caller stops it."""
    port = closed_port()
    environ = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        **{f"{name.upper()}_PORT": str(p) for name, p in services.ports().items()},
        "DATA_DIR": str(data_dir),
        **env,
    }
    environ.pop("CONSUL_HTTP_ADDR", None)
    log_path = data_dir / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "gateway", "--graceful-timeout", str(graceful_timeout)],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + start_timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:  # noqa: S310
                if resp.status == 200:
                    return proc, url, log_path
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError(log_path.read_text())
        time.sleep(0.05)
