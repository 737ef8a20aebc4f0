"""The users service as it runs in production: ``python -m eventpost.serve`` (granian) with
two worker processes (each with threads) over one SQLite store and one key file, production
argon2 parameters; clients in threads. Also ``invoke create-admin`` against that same store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devtools.launcher import free_port
from eventpost.auth import KeySet
from eventpost.serve import server_command
from eventpost.storage.sqlite import SqliteStore
from services.users.store import EMAIL_CLAIMS, USERS

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@dataclass
class Running:
    url: str
    data_dir: Path
    env: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


@pytest.fixture(scope="module")
def users_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("users-http")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MONGODB_"))}
    env.update({"DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING"})
    log = (data_dir / "server.log").open("w")
    port = free_port()
    proc = subprocess.Popen(
        server_command("users", "127.0.0.1", port, threads=8, workers=2),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "the users service exited"
            assert time.monotonic() < deadline, "users service not ready"
            time.sleep(0.1)
        yield Running(url, data_dir, env)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _open_store(running: Running) -> SqliteStore:
    return SqliteStore(running.data_dir / "users.sqlite3")


def test_twenty_concurrent_sign_ups_with_one_email(users_service):
    email = f"same-{uuid.uuid4().hex[:8]}@Example.com"

    def sign_up(i: int) -> int:
        with users_service.client() as client:
            body = {"username": f"racer{i}-{email[5:13]}", "email": email, "password": "pw123456"}
            return client.post("/v1/users", json=body).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = Counter(pool.map(sign_up, range(20)))
    assert statuses == {201: 1, 409: 19}
    store = _open_store(users_service)
    try:
        lowered = email.lower()
        assert store.collection(USERS).count({"email": lowered}) == 1
        assert store.outbox_pending() >= 1
        claim = store.collection(EMAIL_CLAIMS).get(lowered)
        owner = store.collection(USERS).get(claim["user_id"])
        assert owner["email"] == lowered
    finally:
        store.close()


def test_twenty_concurrent_sign_ups_with_one_username(users_service):
    name = f"same{uuid.uuid4().hex[:8]}"

    def sign_up(i: int) -> int:
        with users_service.client() as client:
            body = {"username": name, "email": f"{name}-{i}@example.com", "password": "pw123456"}
            return client.post("/v1/users", json=body).status_code

    with ThreadPoolExecutor(20) as pool:
        statuses = Counter(pool.map(sign_up, range(20)))
    assert statuses == {201: 1, 409: 19}
    store = _open_store(users_service)
    try:
        assert store.collection(USERS).count({"username": name}) == 1
    finally:
        store.close()


def test_throttling_holds_across_worker_processes(users_service):
    name = f"t{uuid.uuid4().hex[:8]}"
    with users_service.client() as client:
        body = {"username": name, "email": f"{name}@example.com", "password": "pw123456"}
        assert client.post("/v1/users", json=body).status_code == 201
        wrong = {"username": name, "password": "wrong password"}
        headers = {"X-Forwarded-For": f"198.51.100.{uuid.uuid4().int % 250}"}

    def fail(_: int) -> int:
        # A new connection each time, so both worker processes see failures.
        with users_service.client() as c:
            return c.post("/v1/auth/token", json=wrong, headers=headers).status_code

    with ThreadPoolExecutor(5) as pool:
        assert set(pool.map(fail, range(5))) == {401}
    for _ in range(4):
        with users_service.client() as c:
            resp = c.post("/v1/auth/token", json={**wrong, "password": "pw123456"}, headers=headers)
            assert resp.status_code == 429
            assert int(resp.headers["retry-after"]) > 0


def test_tokens_from_one_worker_verify_in_the_other(users_service):
    name = f"k{uuid.uuid4().hex[:8]}"
    with users_service.client() as client:
        body = {"username": name, "email": f"{name}@example.com", "password": "pw123456"}
        client.post("/v1/users", json=body)
        token = client.post(
            "/v1/auth/token", json={"username": name, "password": "pw123456"}
        ).json()["access_token"]
        jwks = client.get("/v1/auth/jwks").json()
    assert KeySet(jwks).verify(token).role == "user"
    for _ in range(6):
        with users_service.client() as c:
            resp = c.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 200 and resp.json()["username"] == name


def _invoke(running: Running, *args: str, input_: str | None = None):
    return subprocess.run(
        [str(BIN / "invoke"), *args],
        cwd=ROOT,
        env=running.env,
        capture_output=True,
        text=True,
        timeout=120,
        input=input_,
    )


def test_invoke_create_admin_creates_and_promotes(users_service):
    name = f"root{uuid.uuid4().hex[:6]}"
    done = _invoke(
        users_service,
        "create-admin",
        "--username",
        name,
        "--email",
        f"{name}@example.com",
        "--password",
        "admin password 1",
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "admin password 1" not in done.stdout
    with users_service.client() as client:
        pair = client.post(
            "/v1/auth/token", json={"username": name, "password": "admin password 1"}
        ).json()
        jwks = client.get("/v1/auth/jwks").json()
        me = client.get("/v1/users/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert KeySet(jwks).verify(pair["access_token"]).role == "admin"
    assert me.json()["role"] == "admin"

    # Promote an existing account; no password needed.
    plain = f"carol{uuid.uuid4().hex[:6]}"
    with users_service.client() as client:
        body = {"username": plain, "email": f"{plain}@example.com", "password": "pw123456"}
        assert client.post("/v1/users", json=body).json()["role"] == "user"
    done = _invoke(users_service, "create-admin", "--username", plain)
    assert done.returncode == 0, done.stderr + done.stdout
    with users_service.client() as client:
        token = client.post(
            "/v1/auth/token", json={"username": plain, "password": "pw123456"}
        ).json()["access_token"]
        me = client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert me["role"] == "admin"

    # A new account without a password is refused with a message.
    done = _invoke(users_service, "create-admin", "--username", "nobody-new")
    assert done.returncode != 0
