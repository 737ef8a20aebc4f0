"""``python -m gateway``: serve the gateway with uvicorn on GATEWAY_HOST:GATEWAY_PORT.

SIGTERM / Ctrl-C stop it gracefully: uvicorn stops accepting, lets requests in flight finish
(up to ``--graceful-timeout`` seconds), then the lifespan shutdown closes the upstream pool.
"""

from __future__ import annotations

import argparse
import logging
import signal

import uvicorn

from eventpost.logs import configure_logging
from eventpost.settings import Settings
from gateway.app import UVICORN_OPTIONS, create_app
from gateway.edge_http import EdgeLimits, edge_protocol

log = logging.getLogger("gateway")


def main(argv: list[str] | None = None) -> None:
    """Run the gateway in the foreground until SIGTERM / SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--graceful-timeout", type=float, default=10.0)
    # "edge" (the default) is httptools with the gateway's size limits and read deadlines
    # (gateway.edge_http); the plain uvicorn choices stay for perf/bench_gateway.py: "auto"
    # takes httptools / uvloop when they are installed, else the pure-Python h11 / asyncio.
    parser.add_argument("--http", choices=("edge", "auto", "h11", "httptools"), default="edge")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = parser.parse_args(argv)

    settings = Settings.from_env("gateway")
    configure_logging("gateway", settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        http=edge_protocol(EdgeLimits.from_settings(settings))
        if args.http == "edge"
        else args.http,
        loop=args.loop,
        timeout_graceful_shutdown=args.graceful_timeout,
        **UVICORN_OPTIONS,
    )
    log.info("gateway listening on http://%s:%d", settings.gateway_host, settings.gateway_port)
    # uvicorn handles SIGTERM/SIGINT itself while it runs, then re-raises the signal to the
    # handler that was there before it; a no-op there makes a graceful stop exit with 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.Server(config).run()
    log.info("gateway exited")


if __name__ == "__main__":
    main()
