"""A Consul agent double for the tests: the documented HTTP API of one Consul agent (and its
servers' catalog, health and KV), in an aiohttp app on its own event-loop thread.

No Consul binary can be installed here, so every Consul feature EventPost uses is tested against
this double. It follows https://developer.hashicorp.com/consul/api-docs where EventPost relies
on it:

- ``PUT /v1/agent/service/register`` (JSON field names case-insensitive, as Consul accepts them;
  ``Check`` or ``Checks``; a register of a known ``ID`` replaces it), ``PUT
  /v1/agent/service/deregister/<id>`` (404 when unknown), ``GET /v1/agent/services``,
  ``GET /v1/agent/service/<id>`` (404 when unknown), ``GET /v1/agent/checks``;
- checks: HTTP checks run by the double itself every ``Interval`` with ``Timeout`` (2xx passing,
  429 warning, anything else critical), TTL checks moved by ``PUT /v1/agent/check/pass|warn|
  fail/<id>`` and ``PUT /v1/agent/check/update/<id>`` (404 for an unknown check) and turning
  critical when their TTL runs out; every check starts critical unless its definition gives a
  ``Status``; ``DeregisterCriticalServiceAfter`` removes a service whose check stayed critical
  that long (the reaper runs every ``reap_interval`` seconds);
- ``GET /v1/health/service/<name>`` (``passing``, ``tag``), ``GET /v1/catalog/services``,
  ``GET /v1/catalog/service/<name>``, all with ``X-Consul-Index`` and blocking queries
  (``index`` and ``wait``: the answer comes when the index moves past ``index`` or ``wait``
  runs out);
- KV: ``GET`` (``recurse``, ``raw``, ``keys``, blocking), ``PUT`` (raw body; answers ``true``),
  ``DELETE`` (``recurse``); values base64 in JSON answers, 404 for a missing key;
- ``X-Consul-Token`` (or ``?token=``) checked when the double is given a token: 403 otherwise.

For fault tests a test can :meth:`ConsulDouble.restart_empty` (the agent forgets its services
and checks; KV, held by the servers, stays), :meth:`go_down` / :meth:`come_back` (nothing
listens on the port meanwhile), :meth:`hang` (requests are held unanswered until
:meth:`recover`) or :meth:`answer_garbage` (every answer a 200 that is not JSON). What the
double does not do: ACL policies (one token is all or nothing), sessions and locks, Raft
consistency modes, DNS, Connect, gossip between agents (one agent holds the whole catalog).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

NODE = "consul-double"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    None: 1.0,
}
PASSING, WARNING, CRITICAL = "passing", "warning", "critical"


def parse_duration(value: object, default: float = 0.0) -> float:
    """Seconds of a Consul/Go duration (``"10s"``, ``"1.5m"``, ``"250ms"``, or a bare number of
    seconds); ``default`` when empty."""
    if value is None or value == "":
        return default
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"bad duration {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _ci(body: Mapping[str, Any]) -> dict[str, Any]:
    """JSON field names lower-cased: Consul decodes them case-insensitively."""
    return {str(k).lower(): v for k, v in body.items()}


@dataclass
class Check:
    """One check of the agent."""

    check_id: str
    name: str
    service_id: str
    service_name: str
    kind: str  # "http" or "ttl"
    status: str = CRITICAL
    output: str = ""
    http: str | None = None
    method: str = "GET"
    interval: float = 10.0
    timeout: float = 10.0
    ttl: float = 0.0
    deregister_after: float | None = None
    critical_since: float | None = None
    ttl_expires: float = 0.0
    modify_index: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "Node": NODE,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": "",
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "Type": self.kind,
            "Definition": {
                "HTTP": self.http or "",
                "Interval": f"{self.interval}s" if self.kind == "http" else "",
                "Timeout": f"{self.timeout}s" if self.kind == "http" else "",
                "TTL": f"{self.ttl}s" if self.kind == "ttl" else "",
                "DeregisterCriticalServiceAfter": (
                    f"{self.deregister_after}s" if self.deregister_after is not None else ""
                ),
            },
            "CreateIndex": self.modify_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class Service:
    """One service instance registered with the agent (the body as it was sent is kept)."""

    service_id: str
    name: str
    address: str
    port: int
    tags: list[str]
    meta: dict[str, str]
    body: dict[str, Any]
    modify_index: int = 0
    check_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.service_id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
            "Port": self.port,
            "Meta": dict(self.meta),
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Datacenter": "dc1",
            "CreateIndex": self.modify_index,
            "ModifyIndex": self.modify_index,
        }


class _BadRequest(Exception):
    pass


class ConsulDouble:
    """A Consul agent on ``127.0.0.1:<free port>`` (see the module docstring).

    ``start()`` / ``stop()`` (or ``with ConsulDouble() as consul:``); :attr:`url` is what
    ``CONSUL_HTTP_ADDR`` should be. ``registrations`` keeps every register body as received,
    ``requests`` every ``(method, path_qs, headers)``. ``reap_interval`` is how often services
    critical longer than their ``DeregisterCriticalServiceAfter`` are removed."""

    def __init__(
        self,
        *,
        token: str | None = None,
        reap_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        host: str = "127.0.0.1",
    ) -> None:
        self.token = token
        self.reap_interval = reap_interval
        self.clock = clock
        self.host = host
        self.port = 0
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        self.kv: dict[str, dict[str, Any]] = {}
        self.registrations: list[dict[str, Any]] = []
        self.deregistrations: list[str] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.index = 1
        self.mode = "up"  # "up", "hang", "garbage"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._changed: asyncio.Event | None = None
        self._recovered: asyncio.Event | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- life ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ConsulDouble:
        """Serve on a free port in a thread of its own; returns self."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def main() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name="consul-double", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Consul double did not start")
        return self

    def stop(self) -> None:
        """Stop serving and end the thread."""
        if self._loop is None:
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> ConsulDouble:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        self._recovered = asyncio.Event()
        self._recovered.set()
        self._http = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.1
        )
        await self._runner.setup()
        await self._listen()
        self._reaper = asyncio.create_task(self._reap_loop())

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port)
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        for task in [*self._tasks.values(), *([self._reaper] if self._reaper else [])]:
            task.cancel()
        self._tasks.clear()
        assert self._recovered is not None and self._http is not None
        self._recovered.set()
        if self._runner is not None:
            await self._runner.cleanup()
        await self._http.close()

    # -- faults --------------------------------------------------------------------------

    def restart_empty(self) -> None:
        """The agent restarts with no services and no checks (KV stays: the servers keep it)."""

        async def clear() -> None:
            for task in self._tasks.values():
                task.cancel()
            self._tasks.clear()
            self.services.clear()
            self.checks.clear()
            await self._bump()

        self._call(clear())

    def go_down(self) -> None:
        """Stop listening: connections are refused until :meth:`come_back`."""

        async def down() -> None:
            self.mode = "down"
            if self._site is not None:
                await self._site.stop()
                self._site = None
            # Open keep-alive connections and blocked queries go too, as when a process dies.
            assert self._runner is not None and self._runner.server is not None
            for handler in self._runner.server.connections:
                handler.force_close()
                if handler.transport is not None:
                    handler.transport.abort()

        self._call(down())

    def come_back(self) -> None:
        """Listen again on the same port."""
        self.mode = "up"
        self._call(self._listen())

    def hang(self) -> None:
        """Hold every request unanswered until :meth:`recover`."""
        self.mode = "hang"
        assert self._loop is not None and self._recovered is not None
        self._loop.call_soon_threadsafe(self._recovered.clear)

    def answer_garbage(self) -> None:
        """Answer every request with a 200 whose body is not JSON, until :meth:`recover`."""
        self.mode = "garbage"

    def recover(self) -> None:
        """Answer normally again (after :meth:`hang` or :meth:`answer_garbage`)."""
        self.mode = "up"
        assert self._loop is not None and self._recovered is not None
        self._loop.call_soon_threadsafe(self._recovered.set)

    # -- test helpers (thread-safe) ------------------------------------------------------

    def set_status(self, check_id: str, status: str, *, hold: bool = False) -> None:
        """Set a check's status as if it had run; ``hold`` stops an HTTP check from running
        again (it keeps that status), else it goes on at its interval."""

        async def set_() -> None:
            if hold and (task := self._tasks.pop(check_id, None)) is not None:
                task.cancel()
            await self._set_status(self.checks[check_id], status, "set by the test")

        self._call(set_())

    def put_kv(self, key: str, value: str | bytes) -> None:
        """Write a KV key as ``consul kv put`` would."""
        data = value.encode() if isinstance(value, str) else value
        self._call(self._kv_put(key, data))

    def delete_kv(self, key: str) -> None:
        """Delete a KV key."""
        self._call(self._kv_delete(key, recurse=False))

    def passing(self, name: str) -> list[str]:
        """``address:port`` of the passing instances of ``name``."""
        return sorted(
            f"{s.address}:{s.port}"
            for s in list(self.services.values())
            if s.name == name and self._service_status(s) == PASSING
        )

    def service_ids(self, name: str | None = None) -> list[str]:
        """IDs of the registered services (of ``name`` only, when given)."""
        return sorted(s.service_id for s in list(self.services.values()) if name in (None, s.name))

    # -- dispatch ------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        if self.mode == "hang":
            assert self._recovered is not None
            await self._recovered.wait()
        if self.mode == "garbage":
            return web.Response(text="<html>502 Bad Gateway (not JSON)</html>", status=200)
        if self.token is not None:
            sent = request.headers.get("X-Consul-Token") or request.query.get("token")
            if sent != self.token:
                return web.Response(status=403, text="ACL not found")
        try:
            return await self._route(request)
        except _BadRequest as exc:
            return web.Response(status=400, text=str(exc))

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("PUT", r"/v1/agent/service/register", self._register),
            ("PUT", r"/v1/agent/service/deregister/(.+)", self._deregister),
            ("GET", r"/v1/agent/services", self._agent_services),
            ("GET", r"/v1/agent/service/(.+)", self._agent_service),
            ("GET", r"/v1/agent/checks", self._agent_checks),
            ("PUT", r"/v1/agent/check/(pass|warn|fail)/(.+)", self._ttl_mark),
            ("PUT", r"/v1/agent/check/update/(.+)", self._ttl_update),
            ("GET", r"/v1/health/service/(.+)", self._health_service),
            ("GET", r"/v1/catalog/services", self._catalog_services),
            ("GET", r"/v1/catalog/service/(.+)", self._catalog_service),
            ("GET", r"/v1/status/leader", self._leader),
            ("*", r"/v1/kv/(.*)", self._kv),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and verb in ("*", method):
                return await handler(request, *match.groups())
        return web.Response(status=404 if method in ("GET", "PUT", "DELETE") else 405)

    # -- agent: services -----------------------------------------------------------------

    async def _register(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _BadRequest("Request decode failed: not JSON") from None
        if not isinstance(body, dict):
            raise _BadRequest("Request decode failed: not an object")
        self.registrations.append(body)
        fields = _ci(body)
        name = fields.get("name")
        if not name:
            raise _BadRequest("Missing service name")
        service_id = str(fields.get("id") or name)
        port = fields.get("port", 0)
        if not isinstance(port, int):
            raise _BadRequest("Request decode failed: Port must be a number")
        old = self.services.pop(service_id, None)
        if old is not None:
            self._drop_checks(old)
        service = Service(
            service_id,
            str(name),
            str(fields.get("address") or ""),
            port,
            list(fields.get("tags") or []),
            dict(fields.get("meta") or {}),
            body,
        )
        defs = list(fields.get("checks") or [])
        if fields.get("check"):
            defs.insert(0, fields["check"])
        for number, raw in enumerate(defs, start=1):
            check = self._make_check(service, _ci(raw), number, len(defs))
            service.check_ids.append(check.check_id)
            self.checks[check.check_id] = check
            if check.kind == "http":
                self._tasks[check.check_id] = asyncio.create_task(self._run_http(check))
        self.services[service_id] = service
        service.modify_index = await self._bump()
        return web.Response(text="")

    def _make_check(self, service: Service, raw: dict[str, Any], number: int, count: int) -> Check:
        suffix = "" if count == 1 else f":{number}"
        check_id = str(raw.get("checkid") or raw.get("id") or f"service:{service.service_id}")
        check_id = check_id if raw.get("checkid") or raw.get("id") else check_id + suffix
        try:
            if raw.get("http"):
                check = Check(
                    check_id,
                    str(raw.get("name") or f"Service '{service.name}' check"),
                    service.service_id,
                    service.name,
                    "http",
                    http=str(raw["http"]),
                    method=str(raw.get("method") or "GET"),
                    interval=parse_duration(raw.get("interval"), 10.0),
                    timeout=parse_duration(raw.get("timeout"), 10.0),
                )
                if check.interval <= 0:
                    raise _BadRequest("Interval must be > 0 for an HTTP check")
            elif raw.get("ttl"):
                check = Check(
                    check_id,
                    str(raw.get("name") or f"Service '{service.name}' check"),
                    service.service_id,
                    service.name,
                    "ttl",
                    ttl=parse_duration(raw["ttl"]),
                )
                check.ttl_expires = self.clock() + check.ttl
            else:
                raise _BadRequest("Invalid check: one of HTTP or TTL is needed")
            if raw.get("deregistercriticalserviceafter"):
                check.deregister_after = parse_duration(raw["deregistercriticalserviceafter"])
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        status = str(raw.get("status") or CRITICAL)
        check.status = status
        check.critical_since = self.clock() if status == CRITICAL else None
        return check

    def _drop_checks(self, service: Service) -> None:
        for check_id in service.check_ids:
            self.checks.pop(check_id, None)
            task = self._tasks.pop(check_id, None)
            if task is not None:
                task.cancel()

    async def _deregister(self, _: web.Request, service_id: str) -> web.Response:
        service = self.services.pop(service_id, None)
        if service is None:
            return web.Response(status=404, text=f'Unknown service ID "{service_id}"')
        self.deregistrations.append(service_id)
        self._drop_checks(service)
        await self._bump()
        return web.Response(text="")

    async def _agent_services(self, _: web.Request) -> web.Response:
        return web.json_response({k: s.to_json() for k, s in self.services.items()})

    async def _agent_service(self, _: web.Request, service_id: str) -> web.Response:
        service = self.services.get(service_id)
        if service is None:
            return web.Response(status=404, text=f'unknown service ID: "{service_id}"')
        return web.json_response(service.to_json(), headers=self._index_header())

    async def _agent_checks(self, _: web.Request) -> web.Response:
        return web.json_response({k: c.to_json() for k, c in self.checks.items()})

    # -- agent: checks -------------------------------------------------------------------

    async def _ttl_mark(self, request: web.Request, verb: str, check_id: str) -> web.Response:
        status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[verb]
        return await self._ttl_set(check_id, status, request.query.get("note", ""))

    async def _ttl_update(self, request: web.Request, check_id: str) -> web.Response:
        try:
            body = _ci(json.loads(await request.read() or b"{}"))
        except (ValueError, AttributeError):
            raise _BadRequest("Request decode failed") from None
        status = str(body.get("status") or "")
        if status not in (PASSING, WARNING, CRITICAL):
            raise _BadRequest(f'Invalid check status: "{status}"')
        return await self._ttl_set(check_id, status, str(body.get("output") or ""))

    async def _ttl_set(self, check_id: str, status: str, output: str) -> web.Response:
        check = self.checks.get(check_id)
        if check is None:
            return web.Response(status=404, text=f'Unknown check ID "{check_id}"')
        if check.kind != "ttl":
            return web.Response(status=500, text=f'CheckID "{check_id}" does not have a TTL')
        check.ttl_expires = self.clock() + check.ttl
        await self._set_status(check, status, output)
        return web.Response(text="")

    async def _set_status(self, check: Check, status: str, output: str) -> None:
        check.output = output
        if status == check.status:
            return
        check.status = status
        check.critical_since = self.clock() if status == CRITICAL else None
        check.modify_index = await self._bump()

    async def _run_http(self, check: Check) -> None:
        assert self._http is not None
        while True:
            try:
                timeout = aiohttp.ClientTimeout(total=check.timeout)
                async with self._http.request(check.method, check.http, timeout=timeout) as resp:
                    body = (await resp.read())[:4096].decode(errors="replace")
                    if 200 <= resp.status < 300:
                        status = PASSING
                    elif resp.status == 429:
                        status = WARNING
                    else:
                        status = CRITICAL
                    output = f"HTTP {check.method} {check.http}: {resp.status} Output: {body}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, timeout: all critical, as in Consul
                status, output = CRITICAL, f"Get {check.http}: {exc!r}"
            if self.checks.get(check.check_id) is not check:
                return
            await self._set_status(check, status, output)
            await asyncio.sleep(check.interval)

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            now = self.clock()
            for check in list(self.checks.values()):
                if check.kind == "ttl" and check.status != CRITICAL and now > check.ttl_expires:
                    await self._set_status(check, CRITICAL, "TTL expired")
            for service in list(self.services.values()):
                for check_id in service.check_ids:
                    check = self.checks.get(check_id)
                    if (
                        check is not None
                        and check.deregister_after is not None
                        and check.critical_since is not None
                        and now - check.critical_since > check.deregister_after
                    ):
                        self.services.pop(service.service_id, None)
                        self._drop_checks(service)
                        await self._bump()
                        break

    # -- health and catalog (blocking queries) -------------------------------------------

    def _service_status(self, service: Service) -> str:
        statuses = [self.checks[c].status for c in service.check_ids if c in self.checks]
        for status in (CRITICAL, WARNING):
            if status in statuses:
                return status
        return PASSING

    def _index_header(self) -> dict[str, str]:
        return {"X-Consul-Index": str(self.index), "X-Consul-KnownLeader": "true"}

    async def _bump(self) -> int:
        assert self._changed is not None
        self.index += 1
        # Wake every blocked query: each waits on the event current when it started.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return self.index

    async def _block(self, request: web.Request) -> None:
        """Consul's blocking query: wait while ``index`` is not behind, up to ``wait``."""
        raw = request.query.get("index")
        if not raw:
            return
        try:
            index = int(raw)
            wait = min(parse_duration(request.query.get("wait"), 300.0), 600.0)
        except ValueError:
            raise _BadRequest("Invalid index or wait") from None
        deadline = asyncio.get_running_loop().time() + wait
        while self.index <= index:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            assert self._changed is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def _health_service(self, request: web.Request, name: str) -> web.Response:
        await self._block(request)
        passing_only = "passing" in request.query and request.query["passing"] not in (
            "false",
            "0",
        )
        tag = request.query.get("tag")
        entries = []
        for service in self.services.values():
            if service.name != name or (tag and tag not in service.tags):
                continue
            if passing_only and self._service_status(service) != PASSING:
                continue
            entries.append(
                {
                    "Node": {"ID": "", "Node": NODE, "Address": "127.0.0.1", "Datacenter": "dc1"},
                    "Service": service.to_json(),
                    "Checks": [self._serf_check()]
                    + [self.checks[c].to_json() for c in service.check_ids if c in self.checks],
                }
            )
        return web.json_response(entries, headers=self._index_header())

    @staticmethod
    def _serf_check() -> dict[str, Any]:
        return {
            "Node": NODE,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": PASSING,
            "ServiceID": "",
            "ServiceName": "",
        }

    async def _catalog_services(self, request: web.Request) -> web.Response:
        await self._block(request)
        found: dict[str, set[str]] = {"consul": set()}
        for service in self.services.values():
            found.setdefault(service.name, set()).update(service.tags)
        return web.json_response(
            {k: sorted(v) for k, v in found.items()}, headers=self._index_header()
        )

    async def _catalog_service(self, request: web.Request, name: str) -> web.Response:
        await self._block(request)
        entries = [
            {
                "Node": NODE,
                "Address": "127.0.0.1",
                "ServiceID": s.service_id,
                "ServiceName": s.name,
                "ServiceAddress": s.address,
                "ServicePort": s.port,
                "ServiceTags": list(s.tags),
                "ServiceMeta": dict(s.meta),
            }
            for s in self.services.values()
            if s.name == name
        ]
        return web.json_response(entries, headers=self._index_header())

    async def _leader(self, _: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:8300")

    # -- KV ------------------------------------------------------------------------------

    async def _kv(self, request: web.Request, key: str) -> web.Response:
        if request.method == "PUT":
            await self._kv_put(key, await request.read())
            return web.json_response(True)
        if request.method == "DELETE":
            await self._kv_delete(key, recurse="recurse" in request.query)
            return web.json_response(True)
        if request.method != "GET":
            return web.Response(status=405)
        await self._block(request)
        if "keys" in request.query:
            names = sorted(k for k in self.kv if k.startswith(key))
            return web.json_response(names, headers=self._index_header())
        if "recurse" in request.query:
            found = [self.kv[k] for k in sorted(self.kv) if k.startswith(key)]
        else:
            found = [self.kv[key]] if key in self.kv else []
        if not found:
            return web.Response(status=404, headers=self._index_header())
        if "raw" in request.query:
            return web.Response(body=found[0]["raw"], headers=self._index_header())
        return web.json_response(
            [
                {
                    "Key": entry["Key"],
                    "Value": base64.b64encode(entry["raw"]).decode() if entry["raw"] else None,
                    "Flags": 0,
                    "LockIndex": 0,
                    "CreateIndex": entry["CreateIndex"],
                    "ModifyIndex": entry["ModifyIndex"],
                }
                for entry in found
            ],
            headers=self._index_header(),
        )

    async def _kv_put(self, key: str, data: bytes) -> None:
        index = self.index + 1
        entry = self.kv.get(key) or {"Key": key, "CreateIndex": index}
        entry.update(raw=data, ModifyIndex=index)
        self.kv[key] = entry
        await self._bump()

    async def _kv_delete(self, key: str, *, recurse: bool) -> None:
        gone = [k for k in self.kv if (k.startswith(key) if recurse else k == key)]
        for name in gone:
            del self.kv[name]
        await self._bump()
