"""Lost optimistic races in the users service's use cases (over SQLite): a change is decided
again on what is there now, and one that loses every time is a 409 "kept changing", never
"taken" (that is for a name or address another account really holds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from eventpost.errors import Conflict, Invalid
from eventpost.storage import VersionConflict
from eventpost.storage.optimistic import KeptChanging
from eventpost.storage.sqlite import SqliteStore
from services.users.keys import KeyRing
from services.users.passwords import Passwords
from services.users.service import UsersService
from services.users.store import UsersStore

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "correct horse 1"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def parts(tmp_path: Path):
    store = SqliteStore(tmp_path / "users.sqlite3")
    clock = Clock()
    users = UsersStore(store)
    service = UsersService(
        users, KeyRing(tmp_path / "keys.json"), passwords=Passwords(CHEAP), clock=clock
    )
    yield service, users, clock
    store.close()


def lose_races(monkeypatch: pytest.MonkeyPatch, collection, method: str, times: int) -> list:
    """Make ``collection.method`` raise VersionConflict its first ``times`` calls (as when
    somebody else wrote in between); returns the list of calls made."""
    real = getattr(collection, method)
    calls: list = []

    def racing(*args, **kwargs):
        calls.append(args)
        if len(calls) <= times:
            raise VersionConflict("somebody else wrote first")
        return real(*args, **kwargs)

    monkeypatch.setattr(collection, method, racing)
    return calls


def test_a_change_that_always_loses_is_kept_changing_not_taken(parts, monkeypatch):
    service, users, _ = parts
    alice = service.registration.sign_up("alice", "alice@example.com", PASSWORD)
    lose_races(monkeypatch, users.users, "update", times=100)
    with pytest.raises(KeptChanging) as caught:
        service.addresses.add(alice["id"], "work@example.com")
    assert caught.value.status == 409
    assert caught.value.detail == "The account kept changing; try again."


def test_a_change_that_lost_once_is_decided_again(parts, monkeypatch):
    service, users, _ = parts
    alice = service.registration.sign_up("alice", "alice@example.com", PASSWORD)
    calls = lose_races(monkeypatch, users.users, "update", times=1)
    changed = service.addresses.add(alice["id"], "work@example.com")
    assert [e["email"] for e in changed["secondary_emails"]] == ["work@example.com"]
    assert len(calls) == 2


def test_releasing_a_lapsed_address_that_keeps_changing_is_not_taken(parts, monkeypatch):
    service, users, clock = parts
    alice = service.registration.sign_up("alice", "alice@example.com", PASSWORD)
    service.addresses.add(alice["id"], "squat@example.com")
    clock.now += timedelta(hours=25)
    lose_races(monkeypatch, users.claims, "delete", times=100)
    with pytest.raises(KeptChanging) as caught:
        service.registration.sign_up("victim", "squat@example.com", PASSWORD)
    assert caught.value.detail == "The address kept changing; try again."


def test_releasing_a_lapsed_address_after_a_lost_race_succeeds(parts, monkeypatch):
    service, users, clock = parts
    alice = service.registration.sign_up("alice", "alice@example.com", PASSWORD)
    service.addresses.add(alice["id"], "squat@example.com")
    clock.now += timedelta(hours=25)
    lose_races(monkeypatch, users.claims, "delete", times=1)
    victim = service.registration.sign_up("victim", "squat@example.com", PASSWORD)
    assert victim["email"] == "squat@example.com"
    assert users.user(alice["id"])["secondary_emails"] == []


def test_an_address_really_held_is_taken(parts):
    service, _, _ = parts
    service.registration.sign_up("alice", "alice@example.com", PASSWORD)
    with pytest.raises(Conflict) as caught:
        service.registration.sign_up("bob", "alice@example.com", PASSWORD)
    assert not isinstance(caught.value, KeptChanging)
    assert caught.value.detail == "The email address is already on an account."
    assert caught.value.field == "email"


def test_promoting_an_account_that_changed_meanwhile_is_decided_again(parts, monkeypatch):
    service, users, _ = parts
    carol = service.registration.sign_up("carol", "carol@example.com", PASSWORD)
    calls = lose_races(monkeypatch, users.users, "update", times=1)
    promoted, created = service.admin.make_admin("carol", None, "new password 1")
    assert not created and len(calls) == 2
    assert promoted["id"] == carol["id"] and promoted["role"] == "admin"
    assert service.logins.login("carol", "new password 1", "10.0.0.1").access_token


def test_promoting_with_an_unacceptable_password_is_refused(parts):
    service, users, _ = parts
    service.registration.sign_up("carol", "carol@example.com", PASSWORD)
    with pytest.raises(Invalid) as caught:
        service.admin.make_admin("carol", None, "short")
    assert caught.value.field == "password"
    assert users.user_by_username("carol")["role"] == "user"
