"""Hosts for the multi-host test: network namespaces joined by veth pairs to a bridge in the
root namespace, and a TCP forwarder that makes a root-namespace service bound to 127.0.0.1
(the machine's RabbitMQ) reachable on the bridge address."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, no permission)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip <args>``; raise with its stderr when ``check`` and it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Host:
    """One host: its namespace, its address, the root-namespace end of its veth pair."""

    name: str
    netns: str
    address: str
    link: str  # the veth end on the bridge: down = the host dropped off the network

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *command]

    def link_down(self) -> None:
        """Cut the host off the network (its processes keep running)."""
        ip("link", "set", self.link, "down")

    def link_up(self) -> None:
        """Put the host back on the network."""
        ip("link", "set", self.link, "up")


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.233.<n>.0/24 no interface of the root namespace uses (tried in random order, so
    two runs at once rarely pick the same one)."""
    used = ip("-4", "-o", "addr", "show").stdout
    for n in random.sample(range(10, 250), 240):
        net = ipaddress.IPv4Network(f"10.233.{n}.0/24")
        if f" 10.233.{n}." not in used:
            return net
    raise RuntimeError("no free 10.233.<n>.0/24 subnet")


@contextlib.contextmanager
def hosts(names: tuple[str, ...]) -> Iterator[tuple[str, dict[str, Host]]]:
    """Namespaces ``ep-mh-<hex>-<name>`` on a bridge; yields (bridge address, hosts by name).
    Everything made is removed afterwards, also when the body fails. Raises
    :class:`NetnsUnavailable` when the first namespace cannot be made."""
    tag = uuid.uuid4().hex[:6]
    bridge = f"epbr{tag}"
    made_ns: list[str] = []
    try:
        first = ip("netns", "add", f"ep-mh-{tag}-{names[0]}", check=False)
    except FileNotFoundError:
        raise NetnsUnavailable("no `ip` command (iproute2)") from None
    if first.returncode != 0:
        raise NetnsUnavailable(f"`ip netns add` failed: {first.stderr.strip()}")
    made_ns.append(f"ep-mh-{tag}-{names[0]}")
    try:
        net = _free_subnet()
        addresses = [str(a) for a in net.hosts()]
        bridge_address = addresses[0]
        ip("link", "add", bridge, "type", "bridge")
        ip("addr", "add", f"{bridge_address}/{net.prefixlen}", "dev", bridge)
        ip("link", "set", bridge, "up")
        found = {}
        for i, name in enumerate(names):
            netns = f"ep-mh-{tag}-{name}"
            if netns not in made_ns:
                ip("netns", "add", netns)
                made_ns.append(netns)
            host = Host(name, netns, addresses[i + 1], f"ep{tag}{name}")
            _wire(host, bridge, net.prefixlen)
            found[name] = host
        yield bridge_address, found
    finally:
        for netns in made_ns:  # deleting a namespace deletes its veth end, and so the pair
            ip("netns", "del", netns, check=False)
        ip("link", "del", bridge, check=False)


def _wire(host: Host, bridge: str, prefixlen: int) -> None:
    peer = host.link + "p"
    ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
    ip("link", "set", peer, "netns", host.netns)
    ip("link", "set", host.link, "master", bridge)
    ip("link", "set", host.link, "up")
    ip("-n", host.netns, "link", "set", peer, "name", "eth0")
    ip("-n", host.netns, "addr", "add", f"{host.address}/{prefixlen}", "dev", "eth0")
    ip("-n", host.netns, "link", "set", "eth0", "up")
    ip("-n", host.netns, "link", "set", "lo", "up")


class TcpForward:
    """Listens on ``host`` (a free port, :attr:`port`) and pipes every connection to
    ``target`` in a thread of its own: how hosts reach a broker that listens on 127.0.0.1."""

    def __init__(self, host: str, target: tuple[str, int]) -> None:
        self.host = host
        self.target = target
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> TcpForward:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._pipe_both, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _pipe_both(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            _pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
