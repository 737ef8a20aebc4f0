"""The events service's wiring: the only place its parts are put together."""

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
from services.events.cache import StampedCache
from services.events.resources import EventResource, EventsResource
from services.events.service import EventsService
from services.events.store import EventsStore


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Clock = utcnow,
    id_factory: Callable[[], str] = new_id,
    verifier: Verifier | None = None,
    cache: StampedCache | None = None,
) -> falcon.App:
    """The events service's WSGI app. Nothing connects here: the collections open on first
    use and the users service's JWKS is fetched when the first token is checked.

    ``verifier`` checks access tokens (default: the users service's JWKS found through
    discovery); tests pass a :class:`eventpost.auth.KeySet`."""
    events = EventsStore(store or open_store(settings, "events"), clock)
    if verifier is None:
        discovery = discovery_for(settings)
        verifier = RemoteKeySet(lambda: discovery.url("users") + "/v1/auth/jwks")
    service = EventsService(events, cache or StampedCache(), clock=clock, id_factory=id_factory)
    common = {"service": service, "verifier": verifier, "max_body_bytes": settings.max_body_bytes}
    app = create_service_app(settings, ready_checks={"store": events.ping})
    app.add_route("/v1/events", EventsResource(**common))
    item = EventResource(**common)
    app.add_route("/v1/events/{event_id}", item)
    app.add_route("/v1/events/{event_id}.ics", item, suffix="ics")
    return app
