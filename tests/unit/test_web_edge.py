"""One web edge for the WSGI services and the ASGI gateway: both answer the same problem+json
for 404, 405, an unhandled error and a DomainError, and both log the unhandled error with an
email address in the path masked."""

from __future__ import annotations

import logging

import falcon
import falcon.asgi
import falcon.testing
import pytest

from eventpost.discovery import Discovery
from eventpost.errors import Invalid, Missing, Throttled, Unauthenticated
from eventpost.settings import Settings
from eventpost.web import create_service_app
from gateway.app import create_app

ADDRESS = "ann.secret@example.com"

DOMAIN_ERRORS = {
    "invalid": Invalid("must be a date", "starts_at"),
    "missing": Missing("No such event."),
    "throttled": Throttled("Too many attempts; wait.", retry_after=7),
    "unauthenticated": Unauthenticated("Wrong password."),
}


def raise_for(kind: str) -> None:
    if kind in DOMAIN_ERRORS:
        raise DOMAIN_ERRORS[kind]
    raise RuntimeError(f"database password is hunter2 ({kind})")


class Raiser:
    def on_get(self, req: falcon.Request, resp: falcon.Response, kind: str) -> None:
        raise_for(kind)


class AsyncRaiser:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, kind: str):
        raise_for(kind)


class GarbageDiscovery(Discovery):
    """A discovery backend in trouble: its answer is not a URL, and the proxy fails on it."""

    def instances(self, service: str) -> list[str]:
        return [None]  # type: ignore[list-item]


def service_client() -> falcon.testing.TestClient:
    app = create_service_app(Settings.from_env("test"))
    app.add_route("/raise/{kind}", Raiser())
    return falcon.testing.TestClient(app)


def gateway_client() -> falcon.testing.TestClient:
    settings = Settings(service="gateway", gateway_rate_limit=0)
    app = create_app(settings, discovery=GarbageDiscovery())
    app.add_route("/raise/{kind}", AsyncRaiser())
    return falcon.testing.TestClient(app)


@pytest.fixture(scope="module")
def clients() -> dict[str, falcon.testing.TestClient]:
    return {"service": service_client(), "gateway": gateway_client()}


def answers(clients, method: str, path: str) -> dict[str, falcon.testing.Result]:
    return {name: client.simulate_request(method, path) for name, client in clients.items()}


def assert_problem(result: falcon.testing.Result, status: int) -> dict:
    assert result.status_code == status
    assert result.headers["Content-Type"] == "application/problem+json"
    assert result.headers["X-Request-ID"]
    body = result.json
    assert body["type"] == "about:blank" and body["status"] == status
    return body


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nope", 404), ("POST", "/health", 405)]
)
def test_not_found_and_method_not_allowed_are_the_same_problem(clients, method, path, status):
    got = answers(clients, method, path)
    service, gateway = (assert_problem(got[name], status) for name in ("service", "gateway"))
    assert service == gateway
    assert service["title"] == {404: "Not Found", 405: "Method Not Allowed"}[status]


@pytest.mark.parametrize("kind", sorted(DOMAIN_ERRORS))
def test_a_domain_error_is_the_same_problem(clients, kind):
    got = answers(clients, "GET", f"/raise/{kind}")
    error = DOMAIN_ERRORS[kind]
    service, gateway = (assert_problem(got[name], error.status) for name in ("service", "gateway"))
    assert service == gateway
    assert service["detail"] == error.detail
    for header in ("Retry-After", "WWW-Authenticate"):
        assert got["service"].headers.get(header) == got["gateway"].headers.get(header)
    if kind == "invalid":
        assert service["errors"] == [{"field": "starts_at", "message": "must be a date"}]
    if kind == "throttled":
        assert got["gateway"].headers["Retry-After"] == "7"
    if kind == "unauthenticated":
        assert got["gateway"].headers["WWW-Authenticate"] == "Bearer"


def test_an_unhandled_error_is_the_same_problem_without_internals(clients):
    got = answers(clients, "GET", "/raise/boom")
    service, gateway = (assert_problem(got[name], 500) for name in ("service", "gateway"))
    assert set(service) == set(gateway) == {"type", "title", "status", "detail"}
    assert service["title"] == gateway["title"] == "Internal Server Error"
    assert "hunter2" not in got["service"].text + got["gateway"].text
    assert service["detail"] == "The server failed to answer; the error was logged."
    assert gateway["detail"] == "The gateway failed; the error was logged."


@pytest.mark.parametrize(
    ("name", "path", "logger"),
    [
        ("service", f"/raise/{ADDRESS}", "eventpost.http"),
        # A request the gateway forwards, failing inside the proxy (discovery gave garbage).
        ("gateway", f"/v1/events/{ADDRESS}", "gateway.http"),
        ("gateway", f"/raise/{ADDRESS}", "gateway.http"),
    ],
)
def test_the_unhandled_error_log_masks_an_email_in_the_path(clients, caplog, name, path, logger):
    with caplog.at_level(logging.INFO):
        result = clients[name].simulate_get(path)
    assert_problem(result, 500)
    errors = [r for r in caplog.records if r.name == logger and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage() == f"unhandled error in GET {path.replace(ADDRESS, '***')}"
    assert errors[0].exc_info is not None
    assert all(ADDRESS not in r.getMessage() for r in caplog.records)
    assert all(ADDRESS not in str(getattr(r, "path", "")) for r in caplog.records)
