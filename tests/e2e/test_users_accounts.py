"""Every row of API.md's "Accounts and auth" table, through the gateway of the running suite,
with its error codes; emails read from the suite's SMTP sink.

Failed logins count per client address (20 per 15 minutes) and every request here comes from
127.0.0.1, so these tests fail fewer than 20 logins in all."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from eventpost.storage.sqlite import SqliteStore
from services.users.store import USERS

PASSWORD = "correct horse 1"
PUBLIC_FIELDS = {"id", "username", "email", "secondary_emails", "role", "created_at"}


def _name(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _problem(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "X-Request-ID" in resp.headers
    return body


def _no_secrets(resp: httpx.Response, password: str = PASSWORD) -> None:
    for secret in (password, "$argon2", '"password_hash":', '"token_digest":'):
        assert secret not in resp.text, resp.text


def _token_of(message) -> str:
    text = message.get_body(("plain",)).get_content()
    found = re.search(r"^Verification token: (\S+)\s*$", text, re.MULTILINE)
    assert found, text
    return found.group(1)


def test_sign_up_sends_a_welcome_email(suite):
    name = _name()
    resp = suite.client.post(
        "/v1/users",
        json={"username": name, "email": f"{name}@Example.com", "password": PASSWORD},
    )
    assert resp.status_code == 201, resp.text
    user = resp.json()
    assert set(user) == PUBLIC_FIELDS
    assert user["username"] == name and user["email"] == f"{name}@example.com"
    assert user["role"] == "user" and user["secondary_emails"] == []
    assert user["created_at"].endswith("Z")
    _no_secrets(resp)
    welcome = suite.mailbox.wait_for(to=f"{name}@example.com", subject_contains="Welcome")
    assert welcome is not None


def test_sign_up_errors(suite):
    taken = suite.sign_up()
    name = _name()
    cases = [
        ({"username": taken["username"], "email": f"{name}@example.test"}, 409),
        ({"username": name, "email": taken["email"].upper()}, 409),
        ({"username": "ab", "email": f"{name}@example.test"}, 422),
        ({"username": "Has Caps", "email": f"{name}@example.test"}, 422),
        ({"username": name, "email": "not-an-email"}, 422),
        ({"username": name, "email": f"{name}@example.test", "password": "short"}, 422),
        ({"username": name, "email": f"{name}@example.test", "role": "admin"}, 422),
        ({"username": name, "email": f"{name}@example.test", "id": "mine"}, 422),
        ({"username": name, "email": f"{name}@example.test", "created_at": "2020"}, 422),
        ({"username": name, "email": f"{name}@example.test", "password_hash": "x"}, 422),
        ({"username": {"$ne": None}, "email": f"{name}@example.test"}, 422),
        ({"username": name, "email": {"$gt": ""}}, 422),
        ({"username": [name], "email": f"{name}@example.test"}, 422),
    ]
    for changes, status in cases:
        body = {"password": PASSWORD, **changes}
        resp = suite.client.post("/v1/users", json=body)
        _problem(resp, status)
        _no_secrets(resp)
    # None of them created anything: the name is still free.
    resp = suite.client.post(
        "/v1/users", json={"username": name, "email": f"{name}@example.test", "password": PASSWORD}
    )
    assert resp.status_code == 201


def test_login_by_username_or_email(suite):
    acct = suite.sign_up()
    for identifier in (acct["username"], acct["email"], acct["email"].upper()):
        resp = suite.client.post(
            "/v1/auth/token", json={"username": identifier, "password": acct["password"]}
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert body["token_type"] == "Bearer"
        assert 60 <= body["expires_in"] <= 3600


def test_login_unknown_user_and_wrong_password_look_the_same(suite):
    acct = suite.sign_up()
    wrong = suite.client.post(
        "/v1/auth/token", json={"username": acct["username"], "password": "wrong password"}
    )
    unknown = suite.client.post(
        "/v1/auth/token", json={"username": _name("ghost"), "password": "wrong password"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.headers["www-authenticate"] == unknown.headers["www-authenticate"]
    assert wrong.headers["content-type"] == unknown.headers["content-type"]
    _problem(
        suite.client.post("/v1/auth/token", json={"username": {"$ne": None}, "password": "x"}),
        422,
    )


def test_login_is_throttled_after_repeated_failures(suite):
    acct = suite.sign_up()
    bad = {"username": acct["username"], "password": "wrong password"}
    for _ in range(5):
        assert suite.client.post("/v1/auth/token", json=bad).status_code == 401
    good = {"username": acct["username"], "password": acct["password"]}
    resp = suite.client.post("/v1/auth/token", json=good)
    _problem(resp, 429)
    assert 0 < int(resp.headers["Retry-After"]) <= 15 * 60


def test_refresh_rotates_and_reuse_revokes_the_family(suite):
    acct = suite.sign_up()
    first = suite.client.post(
        "/v1/auth/token", json={"username": acct["username"], "password": acct["password"]}
    ).json()
    resp = suite.client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (
        suite.client.get("/v1/users/me", headers=_auth(second["access_token"])).status_code == 200
    )
    reuse = suite.client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    _problem(reuse, 401)
    newer = suite.client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    _problem(newer, 401)
    _problem(suite.client.post("/v1/auth/refresh", json={"refresh_token": "made-up"}), 401)
    _problem(suite.client.post("/v1/auth/refresh", json={"refresh_token": {"$ne": None}}), 422)


def test_jwks_has_only_public_keys(suite):
    resp = suite.client.get("/v1/auth/jwks")
    assert resp.status_code == 200
    keys = resp.json()["keys"]
    assert keys
    for key in keys:
        assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and key["kid"] and key["x"]
        assert "d" not in key


def test_me(suite):
    acct = suite.sign_up()
    token = suite.login(acct["username"], acct["password"])
    resp = suite.client.get("/v1/users/me", headers=_auth(token))
    assert resp.status_code == 200
    assert resp.json() == acct["user"]
    _no_secrets(resp)
    unauth = suite.client.get("/v1/users/me")
    _problem(unauth, 401)
    assert unauth.headers["www-authenticate"].startswith("Bearer")
    _problem(suite.client.get("/v1/users/me", headers=_auth("nonsense")), 401)
    # Query parameters (operators or not) are refused, never ignored into a 200.
    resp = suite.client.get("/v1/users/me?username[$ne]=x", headers=_auth(token))
    assert 400 <= resp.status_code < 500


def test_change_primary_email(suite):
    acct = suite.sign_up()
    other = suite.sign_up()
    token = suite.login(acct["username"], acct["password"])
    new = f"new-{acct['username']}@example.test"
    resp = suite.client.patch("/v1/users/me", json={"email": new.upper()}, headers=_auth(token))
    assert resp.status_code == 200, resp.text
    assert resp.json()["email"] == new
    assert suite.login(new, acct["password"])
    _problem(
        suite.client.patch("/v1/users/me", json={"email": other["email"]}, headers=_auth(token)),
        409,
    )
    _problem(suite.client.patch("/v1/users/me", json={"email": "nope"}, headers=_auth(token)), 422)
    _problem(suite.client.patch("/v1/users/me", json={"role": "admin"}, headers=_auth(token)), 422)
    _problem(
        suite.client.patch("/v1/users/me", json={"email": {"$ne": None}}, headers=_auth(token)),
        422,
    )
    _problem(suite.client.patch("/v1/users/me", json={"email": new}), 401)
    me = suite.client.get("/v1/users/me", headers=_auth(token)).json()
    assert me["email"] == new and me["role"] == "user"


def test_secondary_email_add_verify_remove(suite):
    acct = suite.sign_up()
    token = suite.login(acct["username"], acct["password"])
    address = f"second-{acct['username']}@example.com"
    resp = suite.client.post("/v1/users/me/emails", json={"email": address}, headers=_auth(token))
    assert resp.status_code == 201, resp.text
    assert resp.json()["secondary_emails"] == [{"email": address, "verified": False}]
    _no_secrets(resp)

    message = suite.mailbox.wait_for(to=address, timeout=10)
    code = _token_of(message)
    verify = "/v1/users/me/emails/verify"
    wrong = suite.client.post(
        verify, json={"email": address, "token": code[:-2] + "xx"}, headers=_auth(token)
    )
    _problem(wrong, 422)
    ok = suite.client.post(verify, json={"email": address, "token": code}, headers=_auth(token))
    assert ok.status_code == 200, ok.text
    assert ok.json()["secondary_emails"] == [{"email": address, "verified": True}]
    again = suite.client.post(verify, json={"email": address, "token": code}, headers=_auth(token))
    _problem(again, 422)

    # Verified here, so nobody else can add it.
    intruder = suite.sign_up()
    itoken = suite.login(intruder["username"], intruder["password"])
    _problem(
        suite.client.post("/v1/users/me/emails", json={"email": address}, headers=_auth(itoken)),
        409,
    )
    _problem(
        suite.client.post("/v1/users/me/emails", json={"email": "bad"}, headers=_auth(token)), 422
    )
    _problem(
        suite.client.post(
            "/v1/users/me/emails", json={"email": address, "verified": True}, headers=_auth(token)
        ),
        422,
    )

    removed = suite.client.delete(f"/v1/users/me/emails/{address}", headers=_auth(token))
    assert removed.status_code == 200, removed.text
    assert removed.json()["secondary_emails"] == []
    _problem(suite.client.delete(f"/v1/users/me/emails/{address}", headers=_auth(token)), 404)


def test_at_most_five_secondary_emails(suite):
    acct = suite.sign_up()
    token = suite.login(acct["username"], acct["password"])
    for i in range(5):
        resp = suite.client.post(
            "/v1/users/me/emails",
            json={"email": f"s{i}-{acct['username']}@example.test"},
            headers=_auth(token),
        )
        assert resp.status_code == 201, resp.text
    resp = suite.client.post(
        "/v1/users/me/emails",
        json={"email": f"s6-{acct['username']}@example.test"},
        headers=_auth(token),
    )
    _problem(resp, 422)


def test_delete_account(suite):
    acct = suite.sign_up()
    pair = suite.client.post(
        "/v1/auth/token", json={"username": acct["username"], "password": acct["password"]}
    ).json()
    token = pair["access_token"]
    resp = suite.client.delete("/v1/users/me", headers=_auth(token))
    assert resp.status_code == 204
    # The token is still unexpired and correctly signed: the users service refuses it anyway.
    _problem(suite.client.get("/v1/users/me", headers=_auth(token)), 401)
    _problem(
        suite.client.post("/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]}), 401
    )
    assert (
        suite.client.post(
            "/v1/auth/token", json={"username": acct["username"], "password": acct["password"]}
        ).status_code
        == 401
    )
    # The username and the address are free again.
    again = suite.client.post(
        "/v1/users",
        json={"username": acct["username"], "email": acct["email"], "password": PASSWORD},
    )
    assert again.status_code == 201


def test_create_admin(suite):
    name = _name("admin")
    suite.create_admin(name, f"{name}@example.test", "admin password 1")
    token = suite.login(name, "admin password 1")
    me = suite.client.get("/v1/users/me", headers=_auth(token)).json()
    assert me["role"] == "admin"
    # Promote an existing account.
    acct = suite.sign_up()
    suite.create_admin(acct["username"], acct["email"])
    token = suite.login(acct["username"], acct["password"])
    assert suite.client.get("/v1/users/me", headers=_auth(token)).json()["role"] == "admin"


def test_twenty_concurrent_sign_ups_with_one_email(suite):
    email = f"{_name('race')}@example.test"

    def sign_up(i: int) -> int:
        body = {"username": _name(f"r{i}"), "email": email, "password": PASSWORD}
        with httpx.Client(base_url=suite.url, timeout=60) as client:
            return client.post("/v1/users", json=body).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = Counter(pool.map(sign_up, range(20)))
    assert statuses == {201: 1, 409: 19}
    if "MONGODB_URL" not in suite.env:  # the embedded store: look at what was stored
        store = SqliteStore(suite.data_dir / "users.sqlite3")
        try:
            assert store.collection(USERS).count({"email": email}) == 1
        finally:
            store.close()
