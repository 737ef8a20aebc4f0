"""The yardstick of ``invoke loadtest`` and ``perf/bench_wrk.py``: a bare Falcon ASGI hello,
served like the gateway (uvicorn, one worker, the gateway's uvicorn options).

    .venv/bin/python perf/hello_app.py --port 8099
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import falcon.asgi
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.app import UVICORN_OPTIONS

BODY = b'{"hello": "world"}'


class Hello:
    """Answers every GET with a small JSON body and nothing else."""

    async def on_get(self, req, resp, **_):
        resp.content_type = falcon.MEDIA_JSON
        resp.data = BODY


def create_app() -> falcon.asgi.App:
    """The hello app: ``/``, ``/health`` and ``/ready`` all say hello."""
    app = falcon.asgi.App()
    for path in ("/", "/health", "/ready"):
        app.add_route(path, Hello())
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, **UVICORN_OPTIONS)


if __name__ == "__main__":
    main()
