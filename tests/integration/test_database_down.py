"""A service whose database is down still starts: /health answers 200 and /ready 503 until
the database is back (nothing touches the database while the app is built)."""

from __future__ import annotations

import falcon.testing
import pytest
from pymongo import MongoClient

from eventpost.settings import Settings
from eventpost.storage.mongo import MongoStore

# Nothing listens on port 1.
UNREACHABLE = "mongodb://127.0.0.1:1/"


def _fail_fast(url: str) -> MongoClient:
    return MongoClient(url, serverSelectionTimeoutMS=300, connectTimeoutMS=300)


def _users_app(settings, store):
    from services.users.app import create_app

    return create_app(settings, store=store)


def _events_app(settings, store):
    from services.events.app import create_app

    return create_app(settings, store=store)


def _notifications_app(settings, store):
    from services.notifications.app import create_app

    return create_app(settings, store=store)


@pytest.mark.parametrize(
    ("service", "build"),
    [("users", _users_app), ("events", _events_app), ("notifications", _notifications_app)],
)
def test_a_service_starts_without_its_database_and_is_not_ready(tmp_path, service, build):
    settings = Settings(service=service, data_dir=tmp_path, mongodb_url=UNREACHABLE)
    store = MongoStore(UNREACHABLE, database=f"eventpost_{service}", client_factory=_fail_fast)
    # Building the app must not need the database (it would raise ServerSelectionTimeout).
    client = falcon.testing.TestClient(build(settings, store))
    assert client.simulate_get("/health").status_code == 200
    ready = client.simulate_get("/ready")
    assert ready.status_code == 503
    assert ready.json["failing"] == ["store"]
