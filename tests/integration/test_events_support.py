"""Helpers for the events service's in-process tests: a store per backend, signed tokens,
a settable clock and a client on ``create_app``."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import falcon.testing
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventpost.auth import AUDIENCE, ISSUER, KeySet
from eventpost.settings import Settings
from eventpost.storage import Store
from services.events.app import create_app

KID = "test-key"


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Tokens:
    """Signs access tokens the way the users service does, and verifies them."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": KID, "alg": "EdDSA", "use": "sig"})
        self.keyset = KeySet({"keys": [jwk]})

    def sign(self, role: str = "user", sub: str | None = None, ttl: int = 900, **extra) -> str:
        now = int(datetime.now(UTC).timestamp())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub or uuid.uuid4().hex,
            "role": role,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            **extra,
        }
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers={"kid": KID})


#: What mongomock 4.3 cannot do (as the storage contract suite names it).
MONGOMOCK_LACKS = {
    "text": "mongomock: no $text search (text indexes are not emulated)",
    "geo": "mongomock: no $geoWithin/$centerSphere nor the trigonometric aggregation "
    "operators the distance is computed with",
}


def open_backend(kind: str, tmp_path: Path) -> Store:
    """A fresh store of ``kind`` (``sqlite`` or ``mongomock``); skips when unavailable."""
    if kind == "sqlite":
        from eventpost.storage.sqlite import SqliteStore

        store: Store = SqliteStore(tmp_path / "events.sqlite3", synchronous="NORMAL")
    else:
        mongomock = pytest.importorskip("mongomock")
        mongo = pytest.importorskip(
            "eventpost.storage.mongo", reason="the MongoDB adapter has not landed"
        )
        store = mongo.MongoStore(
            "mongodb://mongomock.invalid",
            database=f"eventpost_events_{uuid.uuid4().hex[:12]}",
            client_factory=mongomock.MongoClient,
        )
    store._test_backend = kind  # type: ignore[attr-defined]
    return store


def needs(store: Store, *features: str) -> None:
    """Skip the calling test when ``store`` cannot do one of ``features``."""
    if getattr(store, "_test_backend", "sqlite") == "mongomock":
        for feature in features:
            if feature in MONGOMOCK_LACKS:
                pytest.skip(MONGOMOCK_LACKS[feature])


@dataclass
class Api:
    """A client on the events app, with an admin and a plain user token at hand."""

    client: falcon.testing.TestClient
    store: Store
    clock: Clock
    tokens: Tokens
    admin: dict[str, str] = field(default_factory=dict)
    user: dict[str, str] = field(default_factory=dict)

    def create(self, **fields: Any) -> dict[str, Any]:
        resp = self.client.simulate_post(
            "/v1/events", json=event_body(**fields), headers=self.admin
        )
        assert resp.status_code == 201, resp.text
        return resp.json

    def search(self, **params: Any) -> falcon.testing.Result:
        return self.client.simulate_get("/v1/events", params=params)

    def outbox(self) -> list[dict[str, Any]]:
        return list(self.store.iter_outbox())


def event_body(**changes: Any) -> dict[str, Any]:
    """A valid event body, with ``changes``."""
    body: dict[str, Any] = {
        "title": "Jazz night",
        "description": "A quartet plays standards.",
        "topics": ["jazz", "music"],
        "starts_at": "2026-12-01T20:00:00+01:00",
        "ends_at": "2026-12-01T23:00:00+01:00",
        "place": {
            "name": "Le Duc des Lombards",
            "address": "42 rue des Lombards, Paris",
            "lat": 48.8589,
            "lng": 2.3469,
        },
    }
    body.update(changes)
    return body


def make_api(store: Store, settings: Settings | None = None) -> Api:
    clock = Clock()
    tokens = Tokens()
    app = create_app(
        settings or Settings(service="events"), store=store, clock=clock, verifier=tokens.keyset
    )
    return Api(
        client=falcon.testing.TestClient(app),
        store=store,
        clock=clock,
        tokens=tokens,
        admin={"Authorization": "Bearer " + tokens.sign("admin")},
        user={"Authorization": "Bearer " + tokens.sign("user")},
    )
