"""The events service's wiring: the only place its parts are put together."""

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
from services.events.cache import StampedCache
from services.events.resources import EventResource, EventsResource
from services.events.store import EventRepository


def _new_id() -> str:
    return uuid.uuid4().hex


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Clock = utcnow,
    id_factory: Callable[[], str] = _new_id,
    verifier: Any = None,
    cache: StampedCache | None = None,
) -> falcon.App:
    """The events service's WSGI app. Nothing connects here: the store opens on first use
    and the users service's JWKS is fetched when the first token is checked.

    ``verifier`` checks access tokens (default: the users service's JWKS found through
    discovery); tests pass a :class:`eventpost.auth.KeySet`."""
    repo = EventRepository(
        (lambda: store) if store is not None else (lambda: open_store(settings)), clock
    )
    if verifier is None:
        discovery = discovery_for(settings)
        verifier = RemoteKeySet(lambda: discovery.url("users") + "/v1/auth/jwks")
    parts = {
        "repo": repo,
        "cache": cache or StampedCache(),
        "verifier": verifier,
        "settings": settings,
        "clock": clock,
        "id_factory": id_factory,
    }
    app = create_service_app(settings, ready_checks={"store": repo.ping})
    app.add_route("/v1/events", EventsResource(**parts))
    item = EventResource(**parts)
    app.add_route("/v1/events/{event_id}", item)
    app.add_route("/v1/events/{event_id}.ics", item, suffix="ics")
    return app
