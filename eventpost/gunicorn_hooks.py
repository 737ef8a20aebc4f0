"""gunicorn server hooks: each worker of a service registers in Consul (``CONSUL_HTTP_ADDR``).

``gunicorn --config python:eventpost.gunicorn_hooks services.<service>.wsgi:app``: after a worker
has loaded the app it registers the address and port it serves (an HTTP check on ``/health``)
and keeps the registration alive; when the worker exits (SIGTERM to gunicorn, a worker
restart) it deregisters first. Without ``CONSUL_HTTP_ADDR`` the hooks do nothing. The service
name is the second part of the app's module (``services.events.wsgi`` -> ``events``).
"""

from __future__ import annotations

import logging
from typing import Any

from eventpost.consul import Registrar, register_http
from eventpost.settings import Settings

log = logging.getLogger("eventpost.consul")


def service_of(app_uri: str) -> str:
    """``services.events.wsgi:app`` -> ``events``."""
    parts = app_uri.split(":", 1)[0].split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "services" else parts[0]


def post_worker_init(worker: Any) -> None:
    """Register this worker's service instance (gunicorn calls it in the worker)."""
    name = service_of(str(getattr(worker.app, "app_uri", "") or ""))
    settings = Settings.from_env(name)
    if not settings.consul_http_addr or not worker.sockets:
        return
    host, port = worker.sockets[0].getsockname()[:2]
    registration = register_http(settings, name, str(host), int(port))
    worker.eventpost_registration = registration


def worker_exit(server: Any, worker: Any) -> None:
    """Deregister before the worker process ends."""
    registration: Registrar | None = getattr(worker, "eventpost_registration", None)
    if registration is not None:
        registration.stop()
