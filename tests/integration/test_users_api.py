"""The users service in-process (falcon TestClient) over a real SQLite store in tmp_path:
every row of API.md's accounts table with its errors, throttling, refresh rotation,
verification tokens, mass assignment and operator injection.

Passwords use a cheap argon2 profile here; the clock is injected (it starts at the real time
so access tokens, whose expiry PyJWT checks against the real clock, stay valid)."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from argon2 import PasswordHasher

from eventpost.settings import Settings
from eventpost.storage import Query, Store
from eventpost.storage.sqlite import SqliteStore
from eventpost.timeutil import format_time
from services.users.app import create_app
from services.users.keys import KeyRing
from services.users.passwords import Passwords
from services.users.store import EMAIL_CLAIMS, LOGIN_FAILURES, REFRESH_TOKENS, USERS

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse 1"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@dataclass
class Service:
    client: falcon.testing.TestClient
    store: SqliteStore
    keys: KeyRing
    clock: FakeClock
    data_dir: Path

    def sign_up(self, username: str, email: str | None = None, password: str = PASSWORD):
        email = email or f"{username}@example.com"
        return self.client.simulate_post(
            "/v1/users", json={"username": username, "email": email, "password": password}
        )

    def login(self, username: str, password: str = PASSWORD, address: str = "10.0.0.1"):
        return self.client.simulate_post(
            "/v1/auth/token",
            json={"username": username, "password": password},
            headers={"X-Forwarded-For": address},
        )

    def token(self, username: str, password: str = PASSWORD) -> str:
        resp = self.login(username, password)
        assert resp.status_code == 200, resp.text
        return resp.json["access_token"]

    def user_with_token(self, username: str) -> tuple[dict, str]:
        resp = self.sign_up(username)
        assert resp.status_code == 201, resp.text
        return resp.json, self.token(username)

    def call(self, method: str, path: str, token: str | None, **kwargs: Any):
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.simulate_request(method, path, headers=headers, **kwargs)

    def raw_bytes(self) -> bytes:
        """Every byte of the database files (with the WAL) on SQLite; every document of the
        service's collections as JSON elsewhere."""
        if isinstance(self.store, SqliteStore):
            return b"".join(p.read_bytes() for p in self.data_dir.glob("users.sqlite3*"))
        docs = [
            self.store.collection(spec).find(Query(limit=100)).items
            for spec in (USERS, EMAIL_CLAIMS, REFRESH_TOKENS, LOGIN_FAILURES)
        ]
        return json.dumps(docs).encode()

    def outbox(self, type_: str | None = None) -> list[dict]:
        events = self.store.outbox_claim("test", 60, limit=1000)
        self.store.outbox_done([e["id"] for e in events])
        return [e for e in events if type_ is None or e["type"] == type_]

    def verification_token(self, email: str) -> str:
        added = [e for e in self.outbox("user.email_added") if e["payload"]["email"] == email]
        assert added, f"no user.email_added for {email}"
        return added[-1]["payload"]["token"]


def make_service(tmp_path: Path, store: Store | None = None, **kwargs: Any) -> Service:
    store = store or SqliteStore(tmp_path / "users.sqlite3")
    keys = KeyRing(tmp_path / "keys" / "users-signing.json")
    clock = FakeClock()
    settings = Settings(service="users", data_dir=tmp_path)
    app = create_app(
        settings,
        store=store,
        keys=keys,
        passwords=kwargs.pop("passwords", Passwords(CHEAP)),
        clock=clock,
        **kwargs,
    )
    return Service(falcon.testing.TestClient(app), store, keys, clock, tmp_path)


def _teach_mongomock_type_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """mongomock 4.3 evaluates ``$type`` with one type only; MongoDB also takes a list (the
    adapter's partial unique indexes use one). Extends the emulation, not the adapter."""
    from mongomock import filtering

    single = filtering._type_op

    def any_type(doc_val, search_val, in_array=False):
        if isinstance(search_val, list):
            return any(single(doc_val, one, in_array) for one in search_val)
        return single(doc_val, search_val, in_array)

    monkeypatch.setitem(filtering._filterer_inst._operator_map, "$type", any_type)


@pytest.fixture(params=["sqlite", "mongomock", "mongodb"])
def svc(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The service over each storage adapter: SQLite; mongomock (single-threaded, no
    transactions); a real MongoDB when MONGODB_URL is set."""
    database = f"eventpost_test_users_{uuid.uuid4().hex[:10]}"
    store: Store
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "users.sqlite3")
    elif request.param == "mongomock":
        import mongomock

        from eventpost.storage.mongo import MongoStore

        _teach_mongomock_type_lists(monkeypatch)
        store = MongoStore(
            "mongodb://mongomock.invalid", database, client_factory=mongomock.MongoClient
        )
    else:
        url = Settings.from_env().mongodb_url
        if not url:
            pytest.skip("mongodb: MONGODB_URL is not set")
        from eventpost.storage.mongo import MongoStore

        store = MongoStore(url, database)
    service = make_service(tmp_path, store)
    yield service
    if request.param == "mongodb":
        store.drop_database()  # type: ignore[attr-defined]
    store.close()


def assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json
    assert body["status"] == status
    return body


def assert_no_secrets(resp) -> None:
    """No password, hash or stored digest in a response (field names in errors are fine)."""
    text = resp.text
    for secret in (PASSWORD, "$argon2", '"password_hash":', '"token_digest":'):
        assert secret not in text, resp.text


# -- POST /v1/users ------------------------------------------------------------------------


def test_sign_up_creates_the_account_and_emits_user_created(svc):
    resp = svc.sign_up("alice", "Alice@Example.com")
    assert resp.status_code == 201
    user = resp.json
    assert set(user) == {"id", "username", "email", "secondary_emails", "role", "created_at"}
    assert user["username"] == "alice"
    assert user["email"] == "alice@example.com"
    assert user["secondary_emails"] == []
    assert user["role"] == "user"
    assert user["created_at"].endswith("Z")
    assert_no_secrets(resp)
    (event,) = svc.outbox("user.created")
    assert event["payload"] == {"user_id": user["id"], "username": "alice", "email": user["email"]}
    # The password is stored as an argon2id hash, never as given.
    stored = svc.store.collection(USERS).get(user["id"])
    assert stored["password_hash"].startswith("$argon2id$")
    assert PASSWORD.encode() not in svc.raw_bytes()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"username": "ab", "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "x" * 33, "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "Alice", "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "al ice", "email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": "alice", "email": "not-an-email", "password": PASSWORD}, "email"),
        ({"username": "alice", "email": "a@example.com", "password": "short"}, "password"),
        ({"username": "alice", "email": "a@example.com"}, "password"),
        ({"email": "a@example.com", "password": PASSWORD}, "username"),
        ({"username": 123, "email": "a@example.com", "password": PASSWORD}, "username"),
    ],
)
def test_sign_up_refuses_invalid_input(svc, body, field):
    resp = svc.client.simulate_post("/v1/users", json=body)
    problem = assert_problem(resp, 422)
    assert field in [e["field"] for e in problem["errors"]]
    assert svc.outbox() == []


def test_sign_up_reports_every_invalid_field(svc):
    resp = svc.client.simulate_post(
        "/v1/users", json={"username": "A", "email": "nope", "password": "x"}
    )
    problem = assert_problem(resp, 422)
    assert {e["field"] for e in problem["errors"]} == {"username", "email", "password"}


@pytest.mark.parametrize("field", ["role", "id", "created_at", "password_hash", "version"])
def test_sign_up_refuses_mass_assignment(svc, field):
    body = {"username": "alice", "email": "a@example.com", "password": PASSWORD, field: "admin"}
    problem = assert_problem(svc.client.simulate_post("/v1/users", json=body), 422)
    assert problem["errors"] == [{"field": field, "message": "unknown field"}]
    assert svc.sign_up("alice", "a@example.com").json["role"] == "user"


def test_sign_up_conflicts(svc):
    assert svc.sign_up("alice", "alice@example.com").status_code == 201
    taken_name = assert_problem(svc.sign_up("alice", "other@example.com"), 409)
    assert "username" in taken_name["detail"]
    # Emails are compared case-insensitively.
    assert_problem(svc.sign_up("bob", "ALICE@example.com"), 409)
    assert len(svc.outbox("user.created")) == 1


def test_malformed_json_and_wrong_media_type(svc):
    resp = svc.client.simulate_post(
        "/v1/users", body="{not json", headers={"Content-Type": "application/json"}
    )
    assert_problem(resp, 400)
    resp = svc.client.simulate_post(
        "/v1/users", body="username=alice", headers={"Content-Type": "text/plain"}
    )
    assert_problem(resp, 415)
    resp = svc.client.simulate_post(
        "/v1/users",
        body=json.dumps({"username": "a" * 70000}),
        headers={"Content-Type": "application/json"},
    )
    assert_problem(resp, 413)


# -- POST /v1/auth/token -------------------------------------------------------------------


def test_login_gives_a_token_pair(svc):
    user = svc.sign_up("alice").json
    resp = svc.login("alice")
    assert resp.status_code == 200
    body = resp.json
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert resp.headers["cache-control"] == "no-store"
    claims = svc.keys.verify(body["access_token"])
    assert claims.sub == user["id"] and claims.role == "user"
    me = svc.call("GET", "/v1/users/me", body["access_token"])
    assert me.status_code == 200 and me.json == user


def test_login_with_the_email_instead_of_the_username(svc):
    svc.sign_up("alice", "alice@example.com")
    assert svc.login("Alice@Example.com").status_code == 200
    assert svc.login("ALICE").status_code == 200


def test_unknown_user_and_wrong_password_look_the_same(svc):
    svc.sign_up("alice")
    wrong = svc.login("alice", "wrong password")
    unknown = svc.login("nobody", "wrong password")
    unknown_email = svc.login("nobody@example.com", "wrong password")
    for resp in (wrong, unknown, unknown_email):
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Bearer")
    assert wrong.json == unknown.json == unknown_email.json
    assert wrong.headers["content-type"] == unknown.headers["content-type"]


def test_login_rehashes_a_password_made_with_old_parameters(tmp_path):
    first = make_service(tmp_path)
    first.sign_up("alice")
    first.store.close()
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    second = make_service(tmp_path, passwords=Passwords(stronger))
    try:
        users = second.store.collection(USERS)
        before = users.find_one({"username": "alice"})["password_hash"]
        assert "t=1" in before
        assert second.login("alice").status_code == 200
        after = users.find_one({"username": "alice"})["password_hash"]
        assert after != before and "t=2" in after and "m=16" in after
        assert second.login("alice").status_code == 200
    finally:
        second.store.close()


def test_login_body_is_strict(svc):
    svc.sign_up("alice")
    assert_problem(svc.client.simulate_post("/v1/auth/token", json={"username": "alice"}), 422)
    resp = svc.client.simulate_post(
        "/v1/auth/token", json={"username": "alice", "password": PASSWORD, "role": "admin"}
    )
    assert_problem(resp, 422)


# -- throttling ------------------------------------------------------------------------------


def test_failed_logins_are_throttled_per_account(svc):
    svc.sign_up("alice")
    for _ in range(5):
        assert svc.login("alice", "wrong password").status_code == 401
    # Even the right password is refused now, from another address too.
    resp = svc.login("alice", PASSWORD, address="10.9.9.9")
    assert_problem(resp, 429)
    assert 1 <= int(resp.headers["retry-after"]) <= 15 * 60
    # Login by email counts against the same account.
    assert svc.login("alice@example.com", PASSWORD, address="10.9.9.9").status_code == 429
    svc.clock.advance(minutes=15, seconds=1)
    assert svc.login("alice", PASSWORD).status_code == 200
    # A success clears the account's failures.
    for _ in range(4):
        svc.login("alice", "wrong password")
    assert svc.login("alice").status_code == 200
    assert svc.login("alice", "wrong password").status_code == 401


class SlowPasswords(Passwords):
    """Verifying takes 0.2 s, so parallel guesses overlap the way real argon2 makes them."""

    def verify(self, stored_hash, password):
        time.sleep(0.2)
        return super().verify(stored_hash, password)


def test_parallel_guesses_cannot_all_pass_the_throttle(tmp_path):
    svc = make_service(tmp_path, passwords=SlowPasswords(CHEAP))
    svc.sign_up("alice")
    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(lambda _: svc.login("alice", "wrong").status_code, range(12)))
    assert sorted(set(codes)) == [401, 429]
    assert codes.count(401) == 5


def test_unknown_accounts_are_throttled_just_the_same(svc):
    for _ in range(5):
        assert svc.login("ghost", "wrong password").status_code == 401
    assert svc.login("ghost", "wrong password").status_code == 429


def test_failed_logins_are_throttled_per_address(svc):
    svc.sign_up("alice")
    for i in range(20):
        assert svc.login(f"nobody{i}", "wrong password", address="192.0.2.7").status_code == 401
    resp = svc.login("alice", PASSWORD, address="192.0.2.7")
    assert_problem(resp, 429)
    assert int(resp.headers["retry-after"]) > 0
    # Other addresses are not affected.
    assert svc.login("alice", PASSWORD, address="192.0.2.8").status_code == 200
    svc.clock.advance(minutes=16)
    assert svc.login("alice", PASSWORD, address="192.0.2.7").status_code == 200


def test_without_forwarded_for_the_peer_address_is_used(svc):
    svc.sign_up("alice")
    for i in range(20):
        resp = svc.client.simulate_post(
            "/v1/auth/token", json={"username": f"x{i}", "password": "wrong password"}
        )
        assert resp.status_code == 401
    resp = svc.client.simulate_post(
        "/v1/auth/token", json={"username": "alice", "password": PASSWORD}
    )
    assert resp.status_code == 429


# -- POST /v1/auth/refresh -------------------------------------------------------------------


def test_refresh_rotates_and_reuse_revokes_the_family(svc):
    svc.sign_up("alice")
    first = svc.login("alice").json
    second = svc.client.simulate_post(
        "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert second.status_code == 200
    pair = second.json
    assert pair["refresh_token"] != first["refresh_token"]
    assert pair["token_type"] == "Bearer"
    assert svc.call("GET", "/v1/users/me", pair["access_token"]).status_code == 200
    # The spent token is reused: 401, and the newer one is revoked with it.
    reuse = svc.client.simulate_post(
        "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert_problem(reuse, 401)
    newer = svc.client.simulate_post(
        "/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    assert_problem(newer, 401)
    assert newer.json == reuse.json


def test_reuse_revokes_only_its_own_family(svc):
    svc.sign_up("alice")
    laptop = svc.login("alice").json
    phone = svc.login("alice").json
    body = {"refresh_token": laptop["refresh_token"]}
    assert svc.client.simulate_post("/v1/auth/refresh", json=body).status_code == 200
    assert svc.client.simulate_post("/v1/auth/refresh", json=body).status_code == 401
    resp = svc.client.simulate_post(
        "/v1/auth/refresh", json={"refresh_token": phone["refresh_token"]}
    )
    assert resp.status_code == 200


def test_refresh_refusals(svc):
    svc.sign_up("alice")
    pair = svc.login("alice").json
    for token in ("", "garbage", pair["access_token"][:300]):
        resp = svc.client.simulate_post("/v1/auth/refresh", json={"refresh_token": token})
        assert_problem(resp, 401)
    assert_problem(svc.client.simulate_post("/v1/auth/refresh", json={}), 422)
    svc.clock.advance(days=31)
    resp = svc.client.simulate_post(
        "/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    assert_problem(resp, 401)


def test_refresh_tokens_are_stored_hashed(svc):
    svc.sign_up("alice")
    pair = svc.login("alice").json
    assert pair["refresh_token"].encode() not in svc.raw_bytes()


# -- GET /v1/auth/jwks ----------------------------------------------------------------------


def test_jwks_publishes_only_public_keys(svc):
    resp = svc.client.simulate_get("/v1/auth/jwks")
    assert resp.status_code == 200
    (key,) = resp.json["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["alg"] == "EdDSA"
    assert key["kid"] == svc.keys.signing_kid
    assert "d" not in key
    assert set(key) <= {"kty", "crv", "x", "kid", "alg", "use"}


# -- GET/PATCH/DELETE /v1/users/me -----------------------------------------------------------


def test_me_needs_a_valid_token(svc):
    assert_problem(svc.call("GET", "/v1/users/me", None), 401)
    assert_problem(svc.call("GET", "/v1/users/me", "not-a-jwt"), 401)
    resp = svc.call("GET", "/v1/users/me", None, headers={"Authorization": "Basic YTpi"})
    assert_problem(resp, 401)
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_change_primary_email(svc):
    user, token = svc.user_with_token("alice")
    resp = svc.call("PATCH", "/v1/users/me", token, json={"email": "New@Example.com"})
    assert resp.status_code == 200
    assert resp.json["email"] == "new@example.com"
    assert resp.json["id"] == user["id"]
    # Login by the new address works; the old one is free again.
    assert svc.login("new@example.com").status_code == 200
    assert svc.login("alice@example.com").status_code == 401
    assert svc.sign_up("bob", "alice@example.com").status_code == 201
    # Same address again: no change.
    same = svc.call("PATCH", "/v1/users/me", token, json={"email": "new@example.com"})
    assert same.status_code == 200 and same.json["email"] == "new@example.com"


def test_change_primary_email_errors(svc):
    svc.sign_up("bob", "bob@example.com")
    _, token = svc.user_with_token("alice")
    assert_problem(svc.call("PATCH", "/v1/users/me", token, json={"email": "BOB@example.com"}), 409)
    assert_problem(svc.call("PATCH", "/v1/users/me", token, json={"email": "nope"}), 422)
    assert_problem(svc.call("PATCH", "/v1/users/me", token, json={"role": "admin"}), 422)
    resp = svc.call("PATCH", "/v1/users/me", token, json={"email": "x@example.com", "id": "1"})
    assert_problem(resp, 422)
    assert_problem(svc.call("PATCH", "/v1/users/me", None, json={"email": "x@example.com"}), 401)
    me = svc.call("GET", "/v1/users/me", token).json
    assert me["email"] == "alice@example.com" and me["role"] == "user"


def test_a_secondary_address_can_become_primary(svc):
    _, token = svc.user_with_token("alice")
    svc.call("POST", "/v1/users/me/emails", token, json={"email": "work@example.com"})
    resp = svc.call("PATCH", "/v1/users/me", token, json={"email": "work@example.com"})
    assert resp.status_code == 200
    assert resp.json["email"] == "work@example.com"
    assert resp.json["secondary_emails"] == []
    assert svc.sign_up("bob", "alice@example.com").status_code == 201
    assert svc.sign_up("carol", "work@example.com").status_code == 409


def test_delete_account(svc):
    user, token = svc.user_with_token("alice")
    pair = svc.login("alice").json
    svc.call("POST", "/v1/users/me/emails", token, json={"email": "second@example.com"})
    svc.outbox()
    resp = svc.call("DELETE", "/v1/users/me", token)
    assert resp.status_code == 204
    assert resp.text == ""
    # Its still-unexpired access token is refused at once, and so is its refresh token.
    assert_problem(svc.call("GET", "/v1/users/me", token), 401)
    assert_problem(svc.call("DELETE", "/v1/users/me", token), 401)
    resp = svc.client.simulate_post(
        "/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}
    )
    assert_problem(resp, 401)
    assert svc.login("alice").status_code == 401
    (event,) = svc.outbox("user.deleted")
    assert event["payload"] == {"user_id": user["id"]}
    # Username and every address are free again.
    assert svc.sign_up("alice", "second@example.com").status_code == 201
    assert svc.sign_up("alice2", "alice@example.com").status_code == 201


# -- secondary emails ------------------------------------------------------------------------


def test_add_verify_and_remove_a_secondary_email(svc):
    user, token = svc.user_with_token("alice")
    resp = svc.call("POST", "/v1/users/me/emails", token, json={"email": "Work@Example.com"})
    assert resp.status_code == 201
    assert resp.json["secondary_emails"] == [{"email": "work@example.com", "verified": False}]
    assert_no_secrets(resp)
    (event,) = svc.outbox("user.email_added")
    payload = event["payload"]
    assert payload["user_id"] == user["id"] and payload["username"] == "alice"
    assert payload["email"] == "work@example.com"
    assert payload["expires_at"].endswith("Z")
    verify = {"email": "work@example.com", "token": payload["token"]}
    wrong = svc.call("POST", "/v1/users/me/emails/verify", token, json={**verify, "token": "wrong"})
    assert_problem(wrong, 422)
    ok = svc.call("POST", "/v1/users/me/emails/verify", token, json=verify)
    assert ok.status_code == 200
    assert ok.json["secondary_emails"] == [{"email": "work@example.com", "verified": True}]
    again = svc.call("POST", "/v1/users/me/emails/verify", token, json=verify)
    assert_problem(again, 422)
    removed = svc.call("DELETE", "/v1/users/me/emails/WORK@example.com", token)
    assert removed.status_code == 200
    assert removed.json["secondary_emails"] == []
    assert_problem(svc.call("DELETE", "/v1/users/me/emails/work@example.com", token), 404)


def test_verification_token_expires_after_24_hours(svc):
    _, token = svc.user_with_token("alice")
    svc.call("POST", "/v1/users/me/emails", token, json={"email": "work@example.com"})
    code = svc.verification_token("work@example.com")
    svc.clock.advance(hours=24, seconds=1)
    resp = svc.call(
        "POST",
        "/v1/users/me/emails/verify",
        token,
        json={"email": "work@example.com", "token": code},
    )
    assert_problem(resp, 422)


def test_verification_token_is_bound_to_its_address_and_account(svc):
    _, alice = svc.user_with_token("alice")
    _, bob = svc.user_with_token("bob")
    svc.call("POST", "/v1/users/me/emails", alice, json={"email": "a2@example.com"})
    svc.call("POST", "/v1/users/me/emails", alice, json={"email": "a3@example.com"})
    code = svc.verification_token("a2@example.com")
    body = {"email": "a3@example.com", "token": code}
    assert_problem(svc.call("POST", "/v1/users/me/emails/verify", alice, json=body), 422)
    body = {"email": "a2@example.com", "token": code}
    assert_problem(svc.call("POST", "/v1/users/me/emails/verify", bob, json=body), 422)
    assert svc.call("POST", "/v1/users/me/emails/verify", alice, json=body).status_code == 200


def test_secondary_email_errors(svc):
    svc.sign_up("bob", "bob@example.com")
    _, token = svc.user_with_token("alice")
    add = "/v1/users/me/emails"
    assert_problem(svc.call("POST", add, token, json={"email": "bob@example.com"}), 409)
    assert_problem(svc.call("POST", add, token, json={"email": "alice@example.com"}), 409)
    assert_problem(svc.call("POST", add, token, json={"email": "nope"}), 422)
    assert_problem(
        svc.call("POST", add, token, json={"email": "x@example.com", "verified": True}), 422
    )
    assert_problem(svc.call("POST", add, None, json={"email": "x@example.com"}), 401)
    for i in range(5):
        assert svc.call("POST", add, token, json={"email": f"s{i}@example.com"}).status_code == 201
    too_many = assert_problem(svc.call("POST", add, token, json={"email": "s6@example.com"}), 422)
    assert too_many["errors"][0]["field"] == "email"
    assert_problem(svc.call("POST", add, token, json={"email": "s0@example.com"}), 409)
    # Removing: not there, the primary, not an address at all.
    assert_problem(svc.call("DELETE", "/v1/users/me/emails/zz@example.com", token), 404)
    assert_problem(svc.call("DELETE", "/v1/users/me/emails/not-an-address", token), 404)
    assert_problem(svc.call("DELETE", "/v1/users/me/emails/alice@example.com", token), 409)
    # Verify: an address not on the account.
    body = {"email": "zz@example.com", "token": "x"}
    assert_problem(svc.call("POST", "/v1/users/me/emails/verify", token, json=body), 422)


def test_an_address_on_another_account_cannot_be_added(svc):
    _, alice = svc.user_with_token("alice")
    _, bob = svc.user_with_token("bob")
    svc.call("POST", "/v1/users/me/emails", alice, json={"email": "shared@example.com"})
    code = svc.verification_token("shared@example.com")
    body = {"email": "shared@example.com", "token": code}
    assert svc.call("POST", "/v1/users/me/emails/verify", alice, json=body).status_code == 200
    resp = svc.call("POST", "/v1/users/me/emails", bob, json={"email": "shared@example.com"})
    assert_problem(resp, 409)
    assert_problem(
        svc.call("PATCH", "/v1/users/me", bob, json={"email": "shared@example.com"}), 409
    )
    assert_problem(svc.sign_up("carol", "shared@example.com"), 409)
    svc.clock.advance(days=3)
    # Verified addresses never lapse.
    assert_problem(svc.sign_up("carol", "shared@example.com"), 409)


def test_an_unverified_address_is_released_when_its_token_expired(svc):
    _, alice = svc.user_with_token("alice")
    svc.call("POST", "/v1/users/me/emails", alice, json={"email": "squat@example.com"})
    assert_problem(svc.sign_up("victim", "squat@example.com"), 409)
    svc.clock.advance(hours=25)
    assert svc.sign_up("victim", "squat@example.com").status_code == 201
    me = svc.call("GET", "/v1/users/me", alice).json
    assert me["secondary_emails"] == []


# -- no query parameters, operator injection -------------------------------------------------

OPERATORS = [{"$ne": None}, {"$gt": ""}, ["alice"], {"$regex": ".*"}, None, 1, True]


def test_operator_injection_in_every_json_field(svc):
    svc.sign_up("alice", "alice@example.com")
    _, token = svc.user_with_token("bob")
    requests = [
        (
            "POST",
            "/v1/users",
            None,
            {"username": "eve", "email": "e@example.com", "password": PASSWORD},
        ),
        ("POST", "/v1/auth/token", None, {"username": "alice", "password": PASSWORD}),
        ("POST", "/v1/auth/refresh", None, {"refresh_token": "x"}),
        ("PATCH", "/v1/users/me", token, {"email": "b2@example.com"}),
        ("POST", "/v1/users/me/emails", token, {"email": "b3@example.com"}),
        ("POST", "/v1/users/me/emails/verify", token, {"email": "b3@example.com", "token": "x"}),
    ]
    for method, path, tok, body in requests:
        for field in body:
            for evil in OPERATORS:
                resp = svc.call(method, path, tok, json={**body, field: evil})
                assert 400 <= resp.status_code < 500, (path, field, evil, resp.text)
                assert resp.status_code == 422, (path, field, evil, resp.text)
                assert_no_secrets(resp)
    # A whole body that is an array or an operator object is refused too.
    for evil in ([{"username": "alice"}], {"$where": "1"}):
        resp = svc.call("POST", "/v1/auth/token", None, json=evil)
        assert resp.status_code == 422
    me = svc.call("GET", "/v1/users/me", token).json
    assert me["email"] == "bob@example.com" and me["secondary_emails"] == []


def test_query_parameters_are_refused(svc):
    _, token = svc.user_with_token("alice")
    for query in ("username[$ne]=x", "role=admin", "email=%7B%22%24gt%22%3A%22%22%7D"):
        resp = svc.call("GET", "/v1/users/me", token, query_string=query)
        problem = assert_problem(resp, 422)
        assert problem["errors"][0]["message"] == "unknown query parameter"
    resp = svc.call(
        "POST",
        "/v1/auth/token",
        None,
        query_string="username[$ne]=x",
        json={"username": "alice", "password": PASSWORD},
    )
    assert_problem(resp, 422)


def test_operators_in_the_path(svc):
    _, token = svc.user_with_token("alice")
    for evil in ('{"$ne":null}', "$ne", "[$ne]", ".*"):
        resp = svc.call("DELETE", f"/v1/users/me/emails/{evil}", token)
        assert_problem(resp, 404)


def test_ready_checks_the_store(svc, tmp_path):
    resp = svc.client.simulate_get("/ready")
    assert resp.status_code == 200
    assert "store" in resp.json["checks"]


class UnreachableStore(SqliteStore):
    """A real store whose database cannot be reached (as after a disk or server failure)."""

    def ping(self) -> None:
        raise OSError("database unreachable")


def test_not_ready_when_the_store_does_not_answer(tmp_path):
    store = UnreachableStore(tmp_path / "users.sqlite3")
    app = create_app(
        Settings(service="users", data_dir=tmp_path),
        store=store,
        keys=KeyRing(tmp_path / "keys.json"),
        passwords=Passwords(CHEAP),
    )
    try:
        resp = falcon.testing.TestClient(app).simulate_get("/ready")
        assert_problem(resp, 503)
        assert resp.json["failing"] == ["store"]
    finally:
        store.close()


def test_a_claim_left_without_its_account_is_released_after_a_grace(svc):
    # As a sign-up that died between its two writes leaves it on a store without
    # transactions.
    svc.store.collection(EMAIL_CLAIMS).insert(
        {
            "id": "orphan@example.com",
            "user_id": "gone",
            "kind": "primary",
            "verified": True,
            "expires_at": None,
            "created_at": format_time(svc.clock.now),
        }
    )
    assert_problem(svc.sign_up("newcomer", "orphan@example.com"), 409)
    svc.clock.advance(minutes=2)
    assert svc.sign_up("newcomer", "orphan@example.com").status_code == 201
