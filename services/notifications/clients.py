"""Calls from the notifications service to the users and events services.

Why calls and not a local read model: creating or changing a reminder needs two facts that
must be *current* — the event exists (and where it starts now) and the address is one of the
caller's *verified* addresses. A read model fed by domain events would lag behind a
verification the user has just made, and would need every user's addresses copied here. The
calls happen only at create/patch time (a human is waiting, with a 2 s timeout each and a 503
problem when an upstream is down); what the dispatcher needs at send time (title, start, place)
is kept on the reminder as a snapshot and refreshed by ``event.updated``, so sending never
depends on another service being up.

Both calls forward the caller's own ``Authorization`` and ``X-Request-ID``; addresses come
from :mod:`eventpost.discovery`.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

from eventpost.discovery import Discovery
from eventpost.errors import Unauthenticated, Unavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 2.0
_SANE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class UnknownEvent(LookupError):
    """The events service does not know that event."""


class _Unreachable(Exception):
    """One instance could not be reached (the next one may be)."""


class Upstreams(Protocol):
    """What the notifications service asks other services (tests may pass their own)."""

    def get_event(self, event_id: str, *, request_id: str | None) -> dict[str, Any]:
        """The event's JSON; raises :class:`UnknownEvent`, or :class:`Unavailable` (503)."""

    def get_me(self, authorization: str, *, request_id: str | None) -> dict[str, Any]:
        """The caller's user JSON (``GET /v1/users/me`` with the caller's token); raises
        :class:`Unauthenticated` (401) when the account is gone, or :class:`Unavailable`."""


def _unavailable(service: str) -> Unavailable:
    return Unavailable(
        f"The {service} service did not answer; try again shortly.",
        headers={"Retry-After": "2"},
    )


class HttpUpstreams:
    """:class:`Upstreams` over HTTP, addresses from a :class:`Discovery`."""

    def __init__(self, discovery: Discovery, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.discovery = discovery
        self.timeout = timeout

    def _get(
        self, service: str, path: str, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any] | None]:
        try:
            first = self.discovery.url(service)  # round-robin: the calls spread over instances
            others = [u for u in self.discovery.instances(service) if u != first]
        except LookupError:
            log.warning("no instance of %s known", service)
            raise _unavailable(service) from None
        # A GET is safe to repeat: one more instance gets it when the first cannot be reached.
        for base in [first, *others[:1]]:
            try:
                return self._get_at(base, service, path, headers)
            except _Unreachable:
                continue
        raise _unavailable(service)

    def _get_at(
        self, base: str, service: str, path: str, headers: Mapping[str, str]
    ) -> tuple[int, dict[str, Any] | None]:
        request = urllib.request.Request(  # noqa: S310 - internal http URL from discovery
            base + path, headers={"Accept": "application/json", **headers}, method="GET"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
            if status >= 500:
                log.warning("%s answered %s for %s", service, status, path)
                raise _unavailable(service) from None
            return status, None
        except ValueError:
            log.warning("%s answered %s with no JSON", service, path, exc_info=True)
            raise _unavailable(service) from None
        except OSError as exc:
            log.warning("%s could not be reached at %s for %s", service, base, path, exc_info=True)
            reason = getattr(exc, "reason", None)
            if isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
                raise _unavailable(service) from None  # a second wait would double the delay
            raise _Unreachable from None

    @staticmethod
    def _headers(request_id: str | None, authorization: str | None = None) -> dict[str, str]:
        headers = {}
        if request_id:
            headers["X-Request-ID"] = request_id
        if authorization:
            headers["Authorization"] = authorization
        return headers

    def get_event(self, event_id: str, *, request_id: str | None) -> dict[str, Any]:
        if not _SANE_ID.match(event_id):
            raise UnknownEvent(event_id)
        path = "/v1/events/" + urllib.parse.quote(event_id, safe="")
        status, body = self._get("events", path, self._headers(request_id))
        if status == 200 and isinstance(body, dict):
            return body
        if status in (404, 410):
            raise UnknownEvent(event_id)
        log.warning("events answered %s for event %s", status, event_id)
        raise _unavailable("events")

    def get_me(self, authorization: str, *, request_id: str | None) -> dict[str, Any]:
        status, body = self._get("users", "/v1/users/me", self._headers(request_id, authorization))
        if status == 200 and isinstance(body, dict):
            return body
        if status in (401, 404):
            # The token verified here but the account is gone (or was revoked there).
            raise Unauthenticated(
                "The account of this token no longer exists.",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        log.warning("users answered %s for /v1/users/me", status)
        raise _unavailable("users")
