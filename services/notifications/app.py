"""Wiring of the notifications service: the only place its parts meet."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from eventpost.auth import RemoteKeySet, Verifier
from eventpost.discovery import discovery_for
from eventpost.ids import new_id
from eventpost.settings import Settings
from eventpost.storage import Store, open_store
from eventpost.timeutil import Clock, utcnow
from eventpost.web import create_service_app
from services.notifications.clients import HttpUpstreams, Upstreams
from services.notifications.resources import NotificationResource, NotificationsResource
from services.notifications.service import Reminders
from services.notifications.store import NotificationsStore


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Clock = utcnow,
    id_factory: Callable[[], str] = new_id,
    verifier: Verifier | None = None,
    upstreams: Upstreams | None = None,
) -> falcon.App:
    """The notifications service's WSGI app.

    ``verifier`` checks access tokens (default: the users service's JWKS through discovery);
    ``upstreams`` answers questions about events and users (default: HTTP calls through
    discovery, see :mod:`services.notifications.clients`). Nothing connects while the app is
    built: the store opens its collection on first use."""
    store = store or open_store(settings, "notifications")
    discovery = discovery_for(settings)
    if verifier is None:
        verifier = RemoteKeySet(lambda: discovery.url("users") + "/v1/auth/jwks")
    reminders = Reminders(
        NotificationsStore(store),
        upstreams or HttpUpstreams(discovery),
        clock=clock,
        id_factory=id_factory,
    )
    app = create_service_app(settings, ready_checks={"store": store.ping})
    common = {"verifier": verifier, "max_body_bytes": settings.max_body_bytes}
    app.add_route("/v1/notifications", NotificationsResource(reminders, **common))
    app.add_route("/v1/notifications/{notification_id}", NotificationResource(reminders, **common))
    return app
