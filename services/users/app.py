"""Wiring of the users service: the only place its parts are put together."""

from __future__ import annotations

from collections.abc import Callable

import falcon

from eventpost.ids import new_id
from eventpost.settings import Settings
from eventpost.storage import Store, open_store
from eventpost.timeutil import Clock, utcnow
from eventpost.web import create_service_app
from services.users import resources
from services.users.domain import ThrottlePolicy
from services.users.keys import KeyRing, default_key_path
from services.users.passwords import Passwords
from services.users.service import UsersService
from services.users.store import UsersStore


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    keys: KeyRing | None = None,
    passwords: Passwords | None = None,
    clock: Clock = utcnow,
    id_factory: Callable[[], str] = new_id,
    throttle: ThrottlePolicy | None = None,
) -> falcon.App:
    """The users service as a WSGI app.

    ``store`` defaults to the service's store from the settings, ``keys`` to the key file
    (``USERS_SIGNING_KEYS`` or ``DATA_DIR/keys/users-signing.json``), ``passwords`` to
    argon2id with argon2-cffi's default parameters. Tests inject cheaper or fake parts."""
    store = store or open_store(settings, "users")
    keys = keys or KeyRing(default_key_path(settings))
    passwords = passwords or Passwords()
    passwords.warm_up()
    service = UsersService(
        UsersStore(store),
        keys,
        passwords=passwords,
        clock=clock,
        id_factory=id_factory,
        access_token_ttl=settings.access_token_ttl,
        refresh_token_ttl=settings.refresh_token_ttl,
        throttle=throttle,
    )
    app = create_service_app(
        settings,
        ready_checks={"store": store.ping},
        middleware=[resources.NoQueryParameters()],
    )
    parts = (service, keys, settings.max_body_bytes)
    app.add_route("/v1/users", resources.UsersResource(*parts))
    app.add_route("/v1/users/me", resources.MeResource(*parts))
    app.add_route("/v1/users/me/emails", resources.EmailsResource(*parts))
    app.add_route("/v1/users/me/emails/verify", resources.EmailVerificationResource(*parts))
    app.add_route("/v1/users/me/emails/{email}", resources.EmailResource(*parts))
    app.add_route("/v1/auth/token", resources.TokenResource(*parts))
    app.add_route("/v1/auth/refresh", resources.RefreshResource(*parts))
    app.add_route("/v1/auth/jwks", resources.JwksResource(*parts))
    return app
