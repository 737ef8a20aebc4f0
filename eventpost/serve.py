"""``python -m eventpost.serve SERVICE``: serve one of the WSGI services (users, events,
notifications) under granian, the way ``invoke run``, the images and Heroku run them.

granian is a Rust HTTP server: it parses HTTP and keeps connections in Rust and calls the
Falcon app in a pool of blocking threads, so a cached read costs the service a fraction of
what gunicorn's gthread worker spent around the app (docs/notes/NOTES-load.md). One worker
process (``--workers``) with ``--threads`` blocking threads; more throughput comes from more
instances. The worker processes share the socket; the main process supervises them.

The default thread count follows where the service waits (:func:`default_threads`): the events
service on the embedded store does in-process CPU work under the GIL, and one thread answers
its GETs at twice the rate of eight, which spend their time handing the GIL over (measured in
docs/notes/NOTES-load.md); where requests wait (MongoDB, argon2, calls to other services),
threads overlap the waits.

- ``--host`` (default ``127.0.0.1``; the images give ``0.0.0.0``) and ``--port`` (default
  Heroku's ``PORT`` when set, else the service's ``*_PORT``).
- Consul (``CONSUL_HTTP_ADDR``): this process registers the instance (an HTTP check on
  ``/health``) once the socket is bound and keeps it registered; on SIGTERM or Ctrl-C the
  server stops accepting, lets requests in flight finish (``--graceful-timeout`` seconds),
  and deregisters before it exits with 0.
- Logs: granian's own lines go through the same JSON handler as the service's.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Mapping

from granian import Granian
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels

from eventpost.consul import Registrar, register_http
from eventpost.logs import configure_logging
from eventpost.settings import Settings

SERVICES = ("users", "events", "notifications")

log = logging.getLogger("eventpost.serve")

# granian's loggers handed to the root logger (the JSON one) instead of its own stdout handlers.
_GRANIAN_LOGGING = {
    "loggers": {
        "_granian": {"handlers": [], "propagate": True},
        "granian.access": {"handlers": [], "propagate": True},
    }
}


def _not_the_threads_hint(record: logging.LogRecord) -> bool:
    # granian warns at every start that 8 blocking threads is many for this machine's cores;
    # they are chosen: most of a request's time is spent with the GIL released (SQLite,
    # argon2, sockets).
    return "Python threads, which seems quite high" not in record.getMessage()


def default_port(settings: Settings, env: Mapping[str, str]) -> int:
    """Heroku's ``PORT`` when it is set, else the service's ``*_PORT``."""
    port = env.get("PORT")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"PORT={port!r} is not a TCP port")
        return int(port)
    return settings.port


def default_threads(service: str, settings: Settings) -> int:
    """Blocking threads per worker when ``--threads`` is not given. 1 for the events service
    on the embedded store: its requests are CPU work under the GIL (SQLite in-process, the
    users' JWKS fetched rarely), and more threads only contend for it. 8 wherever requests
    wait: on MongoDB (the network), in the users service (argon2 runs without the GIL), in
    the notifications service (it asks the events and users services over HTTP, and one
    slow answer must not hold up every other request, ``/health`` included)."""
    if service == "events" and not settings.mongodb_url:
        return 1
    return 8


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port``. granian binds with SO_REUSEPORT
    on Linux, so a second server on a port in use would not fail: it would silently take a
    share of the first one's connections (another service's requests answered 404 here)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no use
        try:
            probe.bind(address)
        except OSError:
            return True
    return False


def server_command(
    service: str,
    host: str,
    port: int | None = None,
    *,
    threads: int | None = None,
    workers: int = 1,
) -> list[str]:
    """The argv that serves ``service`` on ``host`` and ``port`` (None: from the environment)
    with ``threads`` blocking threads (None: :func:`default_threads`), as the launcher, the
    images and the tests start it."""
    argv = [sys.executable, "-m", "eventpost.serve", service, "--host", host]
    if port is not None:
        argv += ["--port", str(port)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return [*argv, "--workers", str(workers)]


def main(argv: list[str] | None = None) -> None:
    """Serve the service in the foreground until SIGTERM / SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m eventpost.serve", description=__doc__)
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="default: PORT, else the service's *_PORT")
    parser.add_argument(
        "--threads", type=int, help="blocking threads per worker (default: see default_threads)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--graceful-timeout", type=int, default=10)
    args = parser.parse_args(argv)
    if (args.threads is not None and args.threads < 1) or args.workers < 1:
        parser.error("--threads and --workers must be at least 1")

    settings = Settings.from_env(args.service)
    configure_logging(args.service, settings.log_level)
    host = args.host
    try:
        port = args.port if args.port is not None else default_port(settings, os.environ)
    except ValueError as exc:
        parser.error(str(exc))

    if port_in_use(host, port):
        log.error("%s: something already listens on %s:%d", args.service, host, port)
        raise SystemExit(1)
    server = Granian(
        f"services.{args.service}.wsgi:app",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=args.workers,
        blocking_threads=args.threads or default_threads(args.service, settings),
        http=HTTPModes.http1,
        websockets=False,
        log_level=LogLevels.warning,  # its start and stop lines are noise, as gunicorn's were
        log_dictconfig=_GRANIAN_LOGGING,
        log_access=False,
        workers_kill_timeout=args.graceful_timeout,
    )
    logging.getLogger("_granian").addFilter(_not_the_threads_hint)
    registration: list[Registrar] = []

    def register() -> None:
        found = register_http(settings, args.service, host, port)
        if found is not None:
            registration.append(found)

    def deregister() -> None:
        for found in registration:
            found.stop()

    server.on_startup(register)
    server.on_shutdown(deregister)
    log.info("%s listening on http://%s:%d", args.service, host, port)
    server.serve()


if __name__ == "__main__":
    main()
