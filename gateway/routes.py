"""The gateway's routing table: which upstream answers a public path, and which requests need a
user before they may pass. Pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

# (path prefix, upstream). A prefix matches the path itself and anything below it, at a segment
# boundary: "/v1/users" matches "/v1/users" and "/v1/users/me", never "/v1/usersX".
ROUTES: tuple[tuple[str, str, bool], ...] = (
    # (prefix, upstream, the bare prefix itself is a resource)
    ("/v1/users", "users", True),
    ("/v1/auth", "users", False),
    ("/v1/events", "events", True),
    ("/v1/notifications", "notifications", True),
)

EVENT_CHANGES = frozenset({"PATCH", "DELETE"})


@dataclass(frozen=True)
class Route:
    """Where a request goes: ``upstream`` (a service name) under the route label ``name``."""

    upstream: str
    name: str


def _segments_ok(path: str) -> bool:
    # Dot segments would let one prefix reach another service's paths after normalisation.
    return all(seg not in (".", "..") for seg in path.split("/"))


def resolve(path: str) -> Route | None:
    """The route of a (percent-decoded) request path, or None when no upstream serves it."""
    if not path.startswith("/v1/") or not _segments_ok(path):
        return None
    trimmed = path.rstrip("/") or "/"
    for prefix, upstream, bare in ROUTES:
        if trimmed == prefix:
            return Route(upstream, prefix) if bare else None
        if trimmed.startswith(prefix + "/"):
            return Route(upstream, prefix + "/*")
    return None


def requires_user(method: str, path: str) -> bool:
    """Whether a request needs a bearer token before it reaches a service.

    Everything under ``/v1/users/me`` and ``/v1/notifications``, and the documented changes to
    events (POST on the collection, PATCH and DELETE on an event); the rest passes without
    one (services still decide about anything they answer)."""
    trimmed = path.rstrip("/")
    if method == "OPTIONS":
        return False
    if trimmed == "/v1/users/me" or trimmed.startswith("/v1/users/me/"):
        return True
    if trimmed == "/v1/notifications" or trimmed.startswith("/v1/notifications/"):
        return True
    if trimmed == "/v1/events":
        return method == "POST"
    if trimmed.startswith("/v1/events/"):
        # Only an event itself is changed. Any other method or path on these public paths
        # goes on to the events service, which answers 405 (with Allow) or 404 to anyone.
        item = trimmed.removeprefix("/v1/events/")
        return method in EVENT_CHANGES and "/" not in item and not item.endswith(".ics")
    return False
