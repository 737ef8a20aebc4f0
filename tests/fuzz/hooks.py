"""schemathesis hooks for the EventPost contract fuzz (loaded through SCHEMATHESIS_HOOKS by
tests/fuzz/run.py, which puts the gateway's URL, the tokens and the user's address in the
environment).

- Auth per operation: event changes carry the admin token, every other bearer operation the
  user's; ``DELETE /v1/users/me`` gets a fresh account each time (it deletes the caller).
- Realistic data where the schema cannot say what makes a request valid, on schema-valid
  (positive) cases only, so that they reach the code behind the checks instead of a 422:
  a reminder gets an event of its own that starts far in the future, a future ``send_at``,
  a ``before``/``delay`` within 3660 days and the caller's primary address; the user keeps
  room for one more secondary address; a verification gets the token mailed to the address.
  Negative cases are never touched."""

from __future__ import annotations

import os
import re
import time
import urllib.parse
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import schemathesis

from eventpost.timeutil import parse_rfc3339

ADMIN_OPERATIONS = {"createEvent", "changeEvent", "deleteEvent"}
THROWAWAY_OPERATIONS = {"deleteMe"}
# The hooks' own requests come from another loopback address, so that the gateway and the
# users service count them apart from the fuzzer's (its failed logins would throttle ours).
HOOK_ADDRESS = "127.0.0.2"
EVENT_START = "2099-06-01T20:00:00Z"
FUTURE_SEND_AT = "2098-01-01T09:00:00Z"
MAX_SECONDARY = 5
MAX_DURATION = timedelta(days=3660)
TOKEN_LINE = re.compile(r"^Verification token: (\S+)\s*$", re.MULTILINE)


def _env(name: str) -> str:
    return os.environ[name]


def _client(token: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=HOOK_ADDRESS)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=_env("FUZZ_BASE_URL"), transport=transport, headers=headers, timeout=30
    )


def operation_id(operation: Any) -> str:
    """The operationId of a schemathesis APIOperation."""
    return operation.definition.raw.get("operationId", "")


def needs_bearer(operation: Any) -> bool:
    """Whether the operation's security (or the document's) requires the bearer scheme."""
    security = operation.definition.raw.get("security")
    if security is None:
        security = operation.schema.raw_schema.get("security", [])
    return bool(security)


def throwaway_token() -> str:
    """An access token of a new account nobody else uses."""
    name = f"t{uuid.uuid4().hex[:12]}"
    password = "throwaway password 1"
    with _client() as client:
        resp = client.post(
            "/v1/users",
            json={"username": name, "email": f"{name}@example.test", "password": password},
        )
        resp.raise_for_status()
        resp = client.post("/v1/auth/token", json={"username": name, "password": password})
        resp.raise_for_status()
        return resp.json()["access_token"]


@schemathesis.auth(refresh_interval=None)
class EventPostAuth:
    """The token each operation is called with (none on operations open to anyone)."""

    def get(self, case: Any, context: Any) -> str | None:
        operation = context.operation
        if not needs_bearer(operation):
            return None
        if operation_id(operation) in ADMIN_OPERATIONS:
            return _env("FUZZ_ADMIN_TOKEN")
        if operation_id(operation) in THROWAWAY_OPERATIONS:
            return throwaway_token()
        return _env("FUZZ_USER_TOKEN")

    def set(self, case: Any, data: str | None, context: Any) -> None:
        if data is not None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


# -- realistic data -------------------------------------------------------------------------


def fresh_event() -> str:
    """The id of a new event far in the future (one per reminder, so that the fuzzer's own
    changes and deletions of events never make a reminder's event vanish or start earlier)."""
    with _client(_env("FUZZ_ADMIN_TOKEN")) as client:
        resp = client.post(
            "/v1/events",
            json={
                "title": "Fuzz reminder target",
                "topics": ["fuzz"],
                "starts_at": EVENT_START,
                "place": {"name": "Nowhere", "lat": 1.0, "lng": 2.0},
            },
        )
        resp.raise_for_status()
        return resp.json()["id"]


def _future(value: Any) -> bool:
    try:
        return parse_rfc3339(value) > datetime.now(UTC) + timedelta(minutes=5)
    except (TypeError, ValueError):
        return False


def _short_duration(value: Any) -> bool:
    from services.notifications.domain import parse_duration

    try:
        return parse_duration(value, "x") <= MAX_DURATION
    except Exception:
        return False


def reminder_times(body: dict[str, Any]) -> None:
    """A future ``send_at``, a ``before``/``delay`` that is not longer than 3660 days, and no
    other address than the caller's primary (the only verified one)."""
    if isinstance(body.get("send_at"), str) and not _future(body["send_at"]):
        body["send_at"] = FUTURE_SEND_AT
    for field in ("before", "delay"):
        if isinstance(body.get(field), str) and not _short_duration(body[field]):
            body[field] = "PT1H"
    if body.get("email") is not None:
        body["email"] = None


def follow_the_event(notification_id: Any, body: dict[str, Any]) -> None:
    """A ``before`` that still leaves the reminder in the future: the fuzzer may have moved
    the reminder's event (it finds events in search results), so look at its start now; when
    the event starts within the hour, an absolute ``send_at`` instead."""
    if not isinstance(body.get("before"), str) or not isinstance(notification_id, str):
        return
    with _client(_env("FUZZ_USER_TOKEN")) as client:
        reminder = client.get(f"/v1/notifications/{notification_id}")
        if reminder.status_code != 200:
            return
        event = client.get(f"/v1/events/{reminder.json()['event_id']}")
    if event.status_code != 200:
        return
    from services.notifications.domain import parse_duration

    start = parse_rfc3339(event.json()["starts_at"])
    soon = datetime.now(UTC) + timedelta(minutes=5)
    if start - parse_duration(body["before"], "before") > soon:
        return
    if start - timedelta(hours=1) > soon:
        body["before"] = "PT1H"
    else:
        del body["before"]
        body["send_at"] = FUTURE_SEND_AT


def room_for_a_secondary_address() -> None:
    """Remove the user's oldest secondary addresses while there are 5 (the most allowed)."""
    with _client(_env("FUZZ_USER_TOKEN")) as client:
        resp = client.get("/v1/users/me")
        resp.raise_for_status()
        secondary = resp.json()["secondary_emails"]
        for entry in secondary[: max(0, len(secondary) - MAX_SECONDARY + 1)]:
            # Generated addresses hold `%`, `/`, `?` and `#`: one path segment, encoded.
            address = urllib.parse.quote(entry["email"], safe="@")
            client.delete(f"/v1/users/me/emails/{address}").raise_for_status()


def _mailed_token(mailbox: Any, address: str, seen: int, timeout: float = 15.0) -> str | None:
    """The token of the first verification email to ``address`` after the ``seen`` ones that
    were in the mailbox before (an earlier one holds a spent or replaced token)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in mailbox.find(to=address)[seen:]:
            found = TOKEN_LINE.search(message.get_body(("plain",)).get_content())
            if found:
                return found.group(1)
        time.sleep(0.1)
    return None


def a_mailed_token(body: dict[str, Any]) -> None:
    """Add the body's address as a secondary one and put the token mailed to it in the body
    (an address of our own when that one cannot be added), as a client would."""
    from devtools.smtp_sink import Mailbox

    room_for_a_secondary_address()
    mailbox = Mailbox(_env("FUZZ_MAIL_DIR"))
    with _client(_env("FUZZ_USER_TOKEN")) as client:
        for address in (body.get("email"), f"v{uuid.uuid4().hex[:12]}@example.test"):
            if not isinstance(address, str):
                continue
            seen = len(mailbox.find(to=address))
            if client.post("/v1/users/me/emails", json={"email": address}).status_code != 201:
                continue
            token = _mailed_token(mailbox, address, seen)
            if token is not None:
                body["email"], body["token"] = address, token
                return


def _positive(case: Any) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_positive


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    """Make schema-valid cases of the reminder and address operations valid for the code too."""
    if not _positive(case):
        return
    name = operation_id(case.operation)
    body = case.body if isinstance(case.body, dict) else None
    if name == "createNotification" and body is not None:
        body["event_id"] = fresh_event()
        reminder_times(body)
    elif name == "changeNotification" and body is not None:
        reminder_times(body)
        follow_the_event(case.path_parameters.get("id"), body)
    elif name == "addSecondaryEmail":
        room_for_a_secondary_address()
    elif name == "verifySecondaryEmail" and body is not None:
        a_mailed_token(body)
