"""docs/openapi.yaml: a valid OpenAPI 3.1 document that lists exactly the operations of API.md,
each routed by the real apps (the services' ``create_app`` and the gateway), with the request
schemas of the code. In process only: Falcon test clients, SQLite files under tmp_path, a
discovery that knows no upstream (so the gateway never opens a connection)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import falcon
import pytest
import yaml
from argon2 import PasswordHasher
from falcon.testing import TestClient
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from prometheus_client import CollectorRegistry

from eventpost.auth import KeySet
from eventpost.discovery import SERVICES, Discovery
from eventpost.settings import Settings
from eventpost.storage.sqlite import SqliteStore
from gateway.app import create_app as create_gateway
from gateway.routes import requires_user, resolve
from services.events import domain as events_domain
from services.events.app import create_app as create_events
from services.notifications import domain as notifications_domain
from services.notifications import resources as notifications_resources
from services.notifications.app import create_app as create_notifications
from services.users import domain as users_domain
from services.users import resources as users_resources
from services.users.app import create_app as create_users
from services.users.keys import KeyRing
from services.users.passwords import Passwords

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO / "docs" / "openapi.yaml"
API_MD = REPO / "docs" / "API.md"

HTTP_METHODS = ("get", "put", "post", "patch", "delete", "head", "options", "trace")
OPS_PATHS = ("/health", "/ready", "/metrics")
# Stand-ins for path parameters: ids that exist nowhere, a well-formed address.
SAMPLE_PARAMS = {"id": "no-such-id-0", "email": "nobody@example.test"}


# -- the document -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path template, operation object) of every operation in the document."""
    out = []
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                out.append((method.upper(), path, item[method]))
    return out


def shape(path: str) -> str:
    """A path template with its parameter names erased (``/v1/events/{}``)."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def sample_path(path: str) -> str:
    return re.sub(r"\{([^}]*)\}", lambda m: SAMPLE_PARAMS[m.group(1)], path)


def deref(spec: dict[str, Any], node: Any) -> Any:
    """``node`` with a local ``$ref`` followed (repeatedly)."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def needs_bearer(spec: dict[str, Any], op: dict[str, Any]) -> bool:
    """Whether the operation requires the bearer scheme (operation security, else global)."""
    requirements = op.get("security", spec.get("security", []))
    return bool(requirements) and all("bearer" in r for r in requirements)


def api_md_operations() -> set[tuple[str, str]]:
    """(METHOD, path shape) of every row of API.md's tables and of its Operations list."""
    text = API_MD.read_text(encoding="utf-8")
    methods = "GET|POST|PUT|PATCH|DELETE"
    rows = re.findall(rf"^\|\s*({methods})\s+(/\S+?)\s*\|", text, re.MULTILINE)
    bullets = re.findall(rf"^- `({methods}) (/\S+)`", text, re.MULTILINE)
    return {(method, shape(path)) for method, path in rows + bullets}


def test_the_document_is_valid_openapi_3_1(spec):
    assert spec["openapi"].startswith("3.1.")
    validate(spec, cls=OpenAPIV31SpecValidator)
    # The validator does reject a broken document (so the line above can fail).
    broken = copy.deepcopy(spec)
    broken["paths"]["/v1/events"]["get"]["parameters"][0]["in"] = "body"
    with pytest.raises(Exception, match="body"):
        validate(broken, cls=OpenAPIV31SpecValidator)


def test_the_document_has_exactly_the_operations_of_api_md(spec):
    contract = api_md_operations()
    # 10 account, 6 event, 5 notification operations and 3 operational endpoints: a parse that
    # finds fewer means API.md's layout changed under this test.
    assert len(contract) == 24, sorted(contract)
    documented = {(method, shape(path)) for method, path, _ in operations(spec)}
    assert contract - documented == set(), "in API.md, not in docs/openapi.yaml"
    assert documented - contract == set(), "in docs/openapi.yaml, not in API.md"


# -- the apps route every documented operation -------------------------------------------------


class RouteProbe:
    """Middleware that records the URI template Falcon routed the last request to (None when
    no route matched).

    Why this and not the status code: a 404 "no such event" and a 404 "no route" look alike,
    and a 401 may be answered before the resource is reached. Falcon's router itself
    (``app._router``) is private; ``add_middleware`` and ``req.uri_template`` are public, and
    they tell exactly which route template answered."""

    def __init__(self) -> None:
        self.template: str | None = None

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.template = None

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, ok: bool
    ) -> None:
        self.template = req.uri_template if resource is not None else None


class NoInstances(Discovery):
    """A discovery that knows no instance of any service: the gateway answers every forwarded
    request itself with a 503 naming the upstream it would have called."""

    def instances(self, service: str) -> list[str]:
        raise LookupError(service)


@pytest.fixture(scope="module")
def service_clients(tmp_path_factory) -> dict[str, tuple[TestClient, RouteProbe]]:
    tmp = tmp_path_factory.mktemp("openapi-services")
    cheap = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
    apps = {
        "users": create_users(
            Settings(service="users", data_dir=tmp),
            store=SqliteStore(tmp / "users.sqlite3"),
            keys=KeyRing(tmp / "keys.json"),
            passwords=cheap,
        ),
        "events": create_events(
            Settings(service="events", data_dir=tmp),
            store=SqliteStore(tmp / "events.sqlite3"),
            verifier=KeySet(),
        ),
        "notifications": create_notifications(
            Settings(service="notifications", data_dir=tmp),
            store=SqliteStore(tmp / "notifications.sqlite3"),
            verifier=KeySet(),
        ),
    }
    clients = {}
    for name, app in apps.items():
        probe = RouteProbe()
        app.add_middleware(probe)
        clients[name] = (TestClient(app), probe)
    return clients


@pytest.fixture(scope="module")
def routing(spec, service_clients) -> dict[tuple[str, str], dict[str, tuple[int, str | None]]]:
    """(METHOD, path) of every operation -> service -> (status, routed template or None), for
    a request without token or body to a sample path."""
    out: dict[tuple[str, str], dict[str, tuple[int, str | None]]] = {}
    for method, path, _ in operations(spec):
        out[(method, path)] = {}
        for name, (client, probe) in service_clients.items():
            resp = client.simulate_request(method, sample_path(path))
            assert "X-Request-ID" in resp.headers, (name, method, path)
            out[(method, path)][name] = (resp.status_code, probe.template)
    return out


def routed_by(routing, method: str, path: str) -> set[str]:
    """The services whose app has a route for the operation."""
    return {name for name, (_, template) in routing[(method, path)].items() if template}


def test_every_operation_is_routed_by_one_service(spec, routing):
    for method, path, _ in operations(spec):
        for name, (status, template) in routing[(method, path)].items():
            if template is None:
                assert status == 404, (name, method, path, status)
                continue
            assert status != 405, f"{name} routes {path} but has no {method}"
            assert shape(template) == shape(path), (name, method, path, template)
        found = routed_by(routing, method, path)
        if path in OPS_PATHS:
            assert found == set(SERVICES), (method, path, found)
        else:
            assert len(found) == 1, f"{method} {path} is routed by {sorted(found) or 'nothing'}"


def test_the_probe_tells_a_missing_route(service_clients):
    client, probe = service_clients["events"]
    assert client.simulate_get("/v1/eventz/1").status_code == 404
    assert probe.template is None
    assert client.simulate_put("/v1/events").status_code == 405


def test_the_gateway_routing_table_agrees(spec, routing):
    for method, path, op in operations(spec):
        if path in OPS_PATHS:
            continue
        concrete = sample_path(path)
        route = resolve(concrete)
        assert route is not None, f"the gateway does not route {path}"
        assert {route.upstream} == routed_by(routing, method, path), (method, path, route)
        assert requires_user(method, concrete) == needs_bearer(spec, op), (
            f"{method} {path}: the gateway's token requirement differs from the document"
        )


def test_the_gateway_app_answers_every_operation(spec, routing):
    app = create_gateway(
        Settings(service="gateway", gateway_rate_limit=0),
        discovery=NoInstances(),
        registry=CollectorRegistry(),
    )
    client = TestClient(app)
    for method, path, op in operations(spec):
        resp = client.simulate_request(method, sample_path(path))
        assert "X-Request-ID" in resp.headers, (method, path)
        if path in OPS_PATHS:
            # /ready: no upstream is known, so it cannot be ready
            expected = 503 if path == "/ready" else 200
            assert resp.status_code == expected, (method, path, resp.status_code)
        elif needs_bearer(spec, op):
            # Refused at the edge, after the route was found (an unrouted path is 404 first).
            assert resp.status_code == 401, (method, path, resp.status_code)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        else:
            # Forwarded: the 503 names the upstream the request would have gone to.
            (service,) = routed_by(routing, method, path)
            assert resp.status_code == 503, (method, path, resp.status_code)
            assert f"the {service} service" in resp.json["detail"], resp.json
    assert client.simulate_get("/v1/nothing").status_code == 404
    assert client.simulate_get("/v1/auth").status_code == 404


# -- the document agrees with itself and with the code ------------------------------------------


def _schema_objects(spec: dict[str, Any], node: Any, seen: set[int] | None = None):
    """Every object schema reachable from ``node`` (through $ref, properties, items, oneOf,
    anyOf, allOf)."""
    seen = set() if seen is None else seen
    node = deref(spec, node)
    if not isinstance(node, dict) or id(node) in seen:
        return
    seen.add(id(node))
    types = node.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        yield node
    for value in (node.get("properties") or {}).values():
        yield from _schema_objects(spec, value, seen)
    if "items" in node:
        yield from _schema_objects(spec, node["items"], seen)
    for key in ("oneOf", "anyOf", "allOf"):
        for sub in node.get(key, []):
            yield from _schema_objects(spec, sub, seen)


def test_responses_headers_and_bodies_are_declared_consistently(spec):
    for method, path, op in operations(spec):
        where = f"{method} {path}"
        responses = {code: deref(spec, r) for code, r in op["responses"].items()}
        for code, response in responses.items():
            headers = response.get("headers", {})
            assert "X-Request-ID" in headers, f"{where} {code} lacks X-Request-ID"
            if code != "304" and "content" not in response and code != "204":
                pytest.fail(f"{where} {code} has no content")
            if code.startswith(("4", "5")) and not (path == "/ready" and code == "503"):
                assert list(response["content"]) == ["application/problem+json"], (where, code)
        if "401" in responses:
            assert "WWW-Authenticate" in responses["401"]["headers"], where
        if "429" in responses:
            assert "Retry-After" in responses["429"]["headers"], where
        if path.startswith("/v1/"):
            for code in ("401", "429", "500", "502", "503", "504"):
                assert code in responses, f"{where} lacks {code}"
        if needs_bearer(spec, op):
            assert "401" in responses, where
        if "requestBody" in op:
            for code in ("400", "413", "415", "422"):
                assert code in responses, f"{where} has a body but lacks {code}"
            for media, content in op["requestBody"]["content"].items():
                for obj in _schema_objects(spec, content["schema"]):
                    assert obj.get("additionalProperties") is False, (where, media, obj)


def _fields(spec: dict[str, Any], name: str) -> tuple[set[str], set[str]]:
    schema = spec["components"]["schemas"][name]
    return set(schema.get("properties", {})), set(schema.get("required", []))


@pytest.mark.parametrize(
    ("schema", "model"),
    [
        ("SignUp", users_resources.SignUp),
        ("Login", users_resources.Login),
        ("RefreshRequest", users_resources.RefreshBody),
        ("EmailRequest", users_resources.EmailBody),
        ("VerifyEmailRequest", users_resources.VerifyBody),
        ("EventCreate", events_domain.EventIn),
        ("PlaceCreate", events_domain.PlaceIn),
        ("EventPatch", events_domain.EventPatch),
        ("PlacePatch", events_domain.PlacePatch),
        ("NotificationCreate", notifications_resources.CreateNotification),
        ("NotificationPatch", notifications_resources.PatchNotification),
    ],
)
def test_request_schemas_are_the_models_bodies(spec, schema, model):
    properties, required = _fields(spec, schema)
    assert properties == set(model.model_fields)
    assert required == {n for n, f in model.model_fields.items() if f.is_required()}


def test_response_schemas_are_what_the_services_show(spec):
    user = users_domain.public_user(
        {
            "id": "u",
            "username": "ann",
            "email": "a@example.test",
            "role": "user",
            "created_at": "t",
            "password_hash": "never shown",
        }
    )
    assert _fields(spec, "User")[1] == set(user)
    assert _fields(spec, "Event")[1] == set(events_domain.EVENT_FIELDS)
    notification = notifications_domain.public_view(
        {k: None for k in ("id", "event_id", "email", "subject", "send_at", "status")}
        | {"created_at": "t", "updated_at": "t"}
    )
    assert _fields(spec, "Notification")[1] == set(notification)


def test_limits_are_the_codes(spec):
    schemas = spec["components"]["schemas"]
    signup = schemas["SignUp"]["properties"]
    assert signup["username"]["pattern"] == users_domain.USERNAME_RE.pattern
    assert signup["password"]["minLength"] == users_domain.PASSWORD_MIN
    assert signup["password"]["maxLength"] == users_domain.PASSWORD_MAX
    assert signup["email"]["maxLength"] == users_domain.EMAIL_MAX
    secondary = schemas["User"]["properties"]["secondary_emails"]
    assert secondary["maxItems"] == users_domain.MAX_SECONDARY_EMAILS

    event = schemas["EventCreate"]["properties"]
    assert event["title"]["maxLength"] == events_domain.TITLE_MAX
    assert event["description"]["maxLength"] == events_domain.DESCRIPTION_MAX
    assert event["topics"]["maxItems"] == events_domain.TOPICS_MAX
    place = schemas["PlaceCreate"]["properties"]
    assert place["name"]["maxLength"] == events_domain.PLACE_NAME_MAX
    assert place["address"]["maxLength"] == events_domain.ADDRESS_MAX
    params = [deref(spec, p) for p in spec["paths"]["/v1/events"]["get"]["parameters"]]
    search = {p["name"]: p for p in params}
    assert set(search) == events_domain.SEARCH_PARAMETERS
    assert search["limit"]["schema"]["default"] == events_domain.LIMIT_DEFAULT
    assert search["radius_km"]["schema"]["default"] == events_domain.RADIUS_DEFAULT_KM
    assert search["radius_km"]["schema"]["maximum"] == events_domain.RADIUS_MAX_KM
    assert search["q"]["schema"]["maxLength"] == events_domain.Q_MAX

    create = schemas["NotificationCreate"]["properties"]
    assert create["subject"]["maxLength"] == notifications_domain.SUBJECT_MAX
    assert create["message"]["maxLength"] == notifications_domain.MESSAGE_MAX
    statuses = schemas["NotificationStatus"]["enum"]
    assert tuple(statuses) == notifications_domain.STATUSES
