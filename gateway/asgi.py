"""ASGI entry point: ``app`` for an ASGI server. Nothing connects at import; the upstream
connection pool opens on lifespan startup.

Prefer ``python -m gateway``. With another runner, turn proxy headers off
(``uvicorn --no-proxy-headers gateway.asgi:app``): the gateway is the edge, the TCP peer is the
client, and a client's own X-Forwarded-For must never become its address (rate limits, the
users service's login throttling)."""

from eventpost.settings import Settings
from gateway.app import create_app

app = create_app(Settings.from_env("gateway"))
