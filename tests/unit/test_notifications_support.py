"""Helpers of the notifications tests: tokens signed with a test key, a settable clock and a
stand-in for the *other* services (users, events), which lie outside the notifications
service. The notifications store itself is always a real SqliteStore."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from falcon import testing

from eventpost.auth import AUDIENCE, ISSUER, KeySet
from eventpost.settings import Settings
from eventpost.storage.sqlite import SqliteStore
from services.notifications.app import create_app
from services.notifications.clients import UnknownEvent

START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


class Signer:
    """Issues access tokens the way the users service does, with a test key."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key()))
        jwk["kid"] = "test-key"
        self.keyset = KeySet({"keys": [jwk]})

    def token(self, sub: str, role: str = "user") -> str:
        now = int(time.time())
        claims = {
            "sub": sub,
            "role": role,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": "test-key"})


class OtherServices:
    """Answers what the notifications service asks the users and events services."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.events: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str | None]] = []

    def add_event(self, event_id: str, starts_at: str = "2026-12-01T20:00:00+01:00", **extra):
        self.events[event_id] = {
            "id": event_id,
            "title": extra.pop("title", f"Event {event_id}"),
            "starts_at": starts_at,
            "ends_at": None,
            "place": {"name": "Blue Room", "address": "1 Main St", "lat": 1.0, "lng": 2.0},
            "updated_at": "2026-10-01T00:00:00.000000Z",
            **extra,
        }
        return self.events[event_id]

    def add_user(self, user_id: str, email: str, secondary=()) -> str:
        self.users[user_id] = {
            "id": user_id,
            "email": email,
            "secondary_emails": [{"email": e, "verified": v} for e, v in secondary],
        }
        return self.signer.token(user_id)

    def get_event(self, event_id: str, *, request_id: str | None) -> dict[str, Any]:
        self.calls.append(("event", request_id))
        if event_id not in self.events:
            raise UnknownEvent(event_id)
        return self.events[event_id]

    def get_me(self, authorization: str, *, request_id: str | None) -> dict[str, Any]:
        self.calls.append(("me", request_id))
        claims = self.signer.keyset.verify(authorization.removeprefix("Bearer "))
        return self.users[claims.sub]


class Api:
    """A TestClient over the notifications app with a real SqliteStore."""

    def __init__(self, tmp_path, store) -> None:
        self.clock = Clock()
        self.signer = Signer()
        self.others = OtherServices(self.signer)
        self.store = store
        self.app = create_app(
            Settings(service="notifications", data_dir=tmp_path),
            store=self.store,
            clock=self.clock,
            verifier=self.signer.keyset,
            upstreams=self.others,
        )
        self.client = testing.TestClient(self.app)

    def call(self, method: str, path: str, token: str | None = None, **kwargs):
        headers = dict(kwargs.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.simulate_request(method, path, headers=headers, **kwargs)


@pytest.fixture(params=["sqlite", "mongomock"])
def any_store(request, tmp_path, monkeypatch):
    """The notifications store on each adapter that runs without a server: SQLite (a fresh
    file) and MongoStore over mongomock (in-memory MongoDB emulation)."""
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "n.sqlite3", synchronous="NORMAL")
    else:
        import mongomock

        from eventpost.storage.mongo import MongoStore
        from tests.contract.conftest import _teach_mongomock_type_lists

        _teach_mongomock_type_lists(monkeypatch)
        store = MongoStore(
            "mongodb://mongomock.invalid",
            database=f"eventpost_notifications_{uuid.uuid4().hex[:8]}",
            client_factory=mongomock.MongoClient,
        )
    yield store
    store.close()


@pytest.fixture
def api(tmp_path, any_store) -> Api:
    return Api(tmp_path, any_store)
