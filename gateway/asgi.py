"""ASGI entry point: ``uvicorn gateway.asgi:app`` (nothing connects at import; the upstream
connection pool opens on lifespan startup)."""

from eventpost.settings import Settings
from gateway.app import create_app

app = create_app(Settings.from_env("gateway"))
