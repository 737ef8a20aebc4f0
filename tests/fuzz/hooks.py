"""schemathesis hooks for the EventPost contract fuzz (loaded through SCHEMATHESIS_HOOKS by
tests/fuzz/run.py, which puts the tokens and ids in the environment).

- Auth per operation: event changes carry the admin token, every other bearer operation the
  user's; ``DELETE /v1/users/me`` gets a fresh account each time (it deletes the caller)."""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import schemathesis

ADMIN_OPERATIONS = {"createEvent", "changeEvent", "deleteEvent"}
THROWAWAY_OPERATIONS = {"deleteMe"}
# The hooks' own requests come from another loopback address, so the gateway and the users
# service count them apart from the fuzzer's (its failed logins would throttle ours).
HOOK_ADDRESS = "127.0.0.2"


def _env(name: str) -> str:
    return os.environ[name]


def _client() -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=HOOK_ADDRESS)
    return httpx.Client(base_url=_env("FUZZ_BASE_URL"), transport=transport, timeout=30)


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


def needs_bearer(operation: Any) -> bool:
    """Whether the operation's security (or the document's) requires the bearer scheme."""
    security = operation.definition.raw.get("security")
    if security is None:
        security = operation.schema.raw_schema.get("security", [])
    return bool(security)


@schemathesis.auth(refresh_interval=None)
class EventPostAuth:
    """The token each operation is called with (none on operations open to anyone)."""

    def get(self, case: Any, context: Any) -> str | None:
        operation = context.operation
        if not needs_bearer(operation):
            return None
        if operation.definition.raw.get("operationId") in ADMIN_OPERATIONS:
            return _env("FUZZ_ADMIN_TOKEN")
        if operation.definition.raw.get("operationId") in THROWAWAY_OPERATIONS:
            return throwaway_token()
        return _env("FUZZ_USER_TOKEN")

    def set(self, case: Any, data: str | None, context: Any) -> None:
        if data is not None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
