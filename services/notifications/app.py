"""Wiring of the notifications service: the only place its parts meet."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import falcon

from eventpost.auth import RemoteKeySet
from eventpost.discovery import discovery_for
from eventpost.settings import Settings
from eventpost.storage import Store, open_store
from eventpost.timeutil import Clock, utcnow
from eventpost.web import create_service_app
from services.notifications.clients import HttpUpstreams, Upstreams
from services.notifications.resources import NotificationResource, NotificationsResource
from services.notifications.store import notifications


def new_id() -> str:
    """A fresh notification id."""
    return uuid.uuid4().hex


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Clock = utcnow,
    id_factory: Callable[[], str] = new_id,
    verifier: Any = None,
    upstreams: Upstreams | None = None,
) -> falcon.App:
    """The notifications service's WSGI app.

    ``verifier`` checks access tokens (default: the users service's JWKS through discovery);
    ``upstreams`` answers questions about events and users (default: HTTP calls through
    discovery, see :mod:`services.notifications.clients`)."""
    store = store or open_store(settings, "notifications")
    discovery = discovery_for(settings)
    if verifier is None:
        verifier = RemoteKeySet(lambda: discovery.url("users") + "/v1/auth/jwks")
    upstreams = upstreams or HttpUpstreams(discovery)
    coll = notifications(store)
    app = create_service_app(settings, ready_checks={"store": store.ping})
    common = {
        "coll": coll,
        "verifier": verifier,
        "upstreams": upstreams,
        "clock": clock,
        "max_body_bytes": settings.max_body_bytes,
    }
    app.add_route("/v1/notifications", NotificationsResource(id_factory=id_factory, **common))
    app.add_route("/v1/notifications/{notification_id}", NotificationResource(**common))
    return app
