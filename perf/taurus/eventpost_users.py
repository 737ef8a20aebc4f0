"""The seed's load-test scenarios as Locust users (Taurus runs them with its Locust executor;
``invoke loadtest`` runs them with Locust directly).

Per service, two scenarios, as the seed's Taurus script had them:

- GET: list the resources (one page of 100), then GET 5 of them by id: 6 GETs a cycle;
- POST-PUT-DELETE: create a resource, update it (PATCH: the API's update), delete it.

Events are written by an admin (``EVENTPOST_ADMIN_USERNAME`` / ``EVENTPOST_ADMIN_PASSWORD``,
logged in once per Locust process); reminders are made by users each scenario signs up itself.
Users wait no time between requests: the load is bounded by the number of users only.

With ``EVENTPOST_LOADTEST_SAMPLES=<file>`` every request is also written to that file as one
tab-separated line (end time, name, milliseconds, outcome), which ``perf/loadtest.py`` reads
for its report.
"""

from __future__ import annotations

import atexit
import os
import random
import uuid
from datetime import UTC, datetime, timedelta

import gevent.lock
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser

ADMIN_USERNAME = os.environ.get("EVENTPOST_ADMIN_USERNAME", "loadtest_admin")
ADMIN_PASSWORD = os.environ.get("EVENTPOST_ADMIN_PASSWORD", "loadtest admin password")
PASSWORD = "load test password 1"
BY_ID = 5  # GETs by id after each list: a cycle of 6 GETs
MADE_HERE = "Load test event"  # title prefix of the events the POST-PUT-DELETE scenario makes


# -- raw samples for the report -------------------------------------------------------------

_SAMPLES_PATH = os.environ.get("EVENTPOST_LOADTEST_SAMPLES")
_samples = open(_SAMPLES_PATH, "a", buffering=1 << 20) if _SAMPLES_PATH else None  # noqa: SIM115
if _samples is not None:
    atexit.register(_samples.close)


@events.request.add_listener
def _record(name, response_time, response=None, exception=None, **_):
    """One line per request: when it ended, its name, how long, ``ok`` or what went wrong."""
    if _samples is None:
        return
    if exception is None:
        outcome = "ok"
    else:
        status = getattr(response, "status_code", 0) or 0
        outcome = str(status) if status else type(exception).__name__
    now = datetime.now(UTC).timestamp()
    _samples.write(f"{now:.3f}\t{name}\t{response_time:.2f}\t{outcome}\n")


@events.quitting.add_listener
def _flush(**_):
    if _samples is not None:
        _samples.flush()


# -- shared helpers --------------------------------------------------------------------------

_admin_token: str | None = None
_admin_lock = gevent.lock.Semaphore()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def admin_token(client) -> str:
    """The admin's access token, logged in once per process (a login costs an argon2 hash)."""
    global _admin_token
    with _admin_lock:
        if _admin_token is None:
            resp = client.post(
                "/v1/auth/token",
                json={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD},
                name="setup: POST /v1/auth/token",
            )
            if resp.status_code != 200:
                raise StopUser(f"admin login failed ({resp.status_code}): set EVENTPOST_ADMIN_*")
            _admin_token = resp.json()["access_token"]
        return _admin_token


def sign_up(client) -> str:
    """A new account of this scenario's own, logged in; its access token."""
    username = f"lt{uuid.uuid4().hex[:16]}"
    body = {"username": username, "email": f"{username}@example.test", "password": PASSWORD}
    client.post("/v1/users", json=body, name="setup: POST /v1/users")
    resp = client.post(
        "/v1/auth/token",
        json={"username": username, "password": PASSWORD},
        name="setup: POST /v1/auth/token",
    )
    if resp.status_code != 200:
        raise StopUser(f"login of a new account failed ({resp.status_code})")
    return resp.json()["access_token"]


def new_event_body() -> dict:
    """A valid event, starting years from now: lists sorted by start time (the GET scenarios)
    never show it, so they never pick one that is deleted a moment later."""
    starts = datetime.now(UTC) + timedelta(days=random.randint(3650, 7300))
    return {
        "title": f"{MADE_HERE} {uuid.uuid4().hex[:8]}",
        "description": "Made by the load test; deleted by it right after.",
        "topics": [random.choice(["jazz", "tech", "food", "running"])],
        "starts_at": starts.isoformat(timespec="seconds"),
        "ends_at": (starts + timedelta(hours=2)).isoformat(timespec="seconds"),
        "place": {"name": "Load Hall", "address": "1 Main Street", "lat": 48.85, "lng": 2.35},
    }


def future_event_ids(client, name: str) -> list[str]:
    """Ids of listed events that start more than a day from now (reminders need a future)."""
    soon = datetime.now(UTC) + timedelta(days=1)
    resp = client.get("/v1/events?limit=100", name=name)
    if resp.status_code != 200:
        return []
    return [
        item["id"]
        for item in resp.json()["items"]
        if datetime.fromisoformat(item["starts_at"].replace("Z", "+00:00")) > soon
        and not item["title"].startswith(MADE_HERE)
    ]


def _ids(resp) -> list[str]:
    """Ids of a list's items, less the events the POST-PUT-DELETE scenario is about to delete."""
    if resp.status_code != 200:
        return []
    items = resp.json()["items"]
    return [item["id"] for item in items if not item.get("title", "").startswith(MADE_HERE)]


# -- events ----------------------------------------------------------------------------------


class EventsGet(FastHttpUser):
    """GET scenario of the events service: list, then 5 events by id."""

    abstract = True
    wait_time = constant(0)
    weight = 7  # 7 GET users to 3 POST-PUT-DELETE users, as the seed's concurrency

    @task
    def cycle(self) -> None:
        ids = _ids(self.client.get("/v1/events?limit=100", name="GET /v1/events"))
        for event_id in random.sample(ids, min(BY_ID, len(ids))):
            self.client.get(f"/v1/events/{event_id}", name="GET /v1/events/{id}")


class EventsPostPutDelete(FastHttpUser):
    """POST-PUT-DELETE scenario of the events service, as the admin."""

    abstract = True
    wait_time = constant(0)
    weight = 3

    def on_start(self) -> None:
        self.headers = _bearer(admin_token(self.client))

    @task
    def cycle(self) -> None:
        resp = self.client.post(
            "/v1/events", json=new_event_body(), headers=self.headers, name="POST /v1/events"
        )
        if resp.status_code != 201:
            return
        path = f"/v1/events/{resp.json()['id']}"
        self.client.patch(
            path,
            json={"title": f"{MADE_HERE} (updated)"},
            headers=self.headers,
            name="PATCH /v1/events/{id}",
        )
        self.client.delete(path, headers=self.headers, name="DELETE /v1/events/{id}")


# -- notifications ---------------------------------------------------------------------------


class NotificationsGet(FastHttpUser):
    """GET scenario of the notifications service: a user lists their reminders, then GETs 5
    of them by id (the user signs up and sets 5 reminders first)."""

    abstract = True
    wait_time = constant(0)
    weight = 7  # 7 GET users to 3 POST-PUT-DELETE users, as the seed's concurrency

    def on_start(self) -> None:
        self.headers = _bearer(sign_up(self.client))
        event_ids = future_event_ids(self.client, "setup: GET /v1/events")
        for event_id in random.sample(event_ids, min(BY_ID, len(event_ids))):
            self.client.post(
                "/v1/notifications",
                json={"event_id": event_id, "before": "PT1H"},
                headers=self.headers,
                name="setup: POST /v1/notifications",
            )

    @task
    def cycle(self) -> None:
        ids = _ids(
            self.client.get(
                "/v1/notifications?limit=100", headers=self.headers, name="GET /v1/notifications"
            )
        )
        for reminder_id in random.sample(ids, min(BY_ID, len(ids))):
            self.client.get(
                f"/v1/notifications/{reminder_id}",
                headers=self.headers,
                name="GET /v1/notifications/{id}",
            )


class NotificationsPostPutDelete(FastHttpUser):
    """POST-PUT-DELETE scenario of the notifications service: a user of its own sets a
    reminder, moves it, deletes it."""

    abstract = True
    wait_time = constant(0)
    weight = 3

    def on_start(self) -> None:
        self.headers = _bearer(sign_up(self.client))
        self.event_ids = future_event_ids(self.client, "setup: GET /v1/events")
        if not self.event_ids:
            raise StopUser("no event starts more than a day from now: populate the suite first")

    @task
    def cycle(self) -> None:
        resp = self.client.post(
            "/v1/notifications",
            json={"event_id": random.choice(self.event_ids), "before": "PT1H"},
            headers=self.headers,
            name="POST /v1/notifications",
        )
        if resp.status_code != 201:
            return
        path = f"/v1/notifications/{resp.json()['id']}"
        self.client.patch(
            path, json={"before": "PT2H"}, headers=self.headers, name="PATCH /v1/notifications/{id}"
        )
        self.client.delete(path, headers=self.headers, name="DELETE /v1/notifications/{id}")
