"""The users service's messages keep their contracts: the real use cases (sign-up, add a
secondary address, delete the account) run over SQLite, and every outbox record they leave
must be EXACTLY its :mod:`eventpost.contracts` model (no missing, extra or mistyped field)
and parse as the consumers read it. Fails as soon as the producer and the contract drift
apart, in either direction."""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher

from eventpost import contracts
from eventpost.messaging import Envelope
from eventpost.storage.sqlite import SqliteStore
from services.users.keys import KeyRing
from services.users.passwords import Passwords
from services.users.service import UsersService
from services.users.store import UsersStore

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def store(tmp_path: Path):
    store = SqliteStore(tmp_path / "users.sqlite3")
    yield store
    store.close()


def drain(store: SqliteStore) -> list[dict]:
    records = store.outbox_claim("test", 60, limit=100)
    store.outbox_done([r["id"] for r in records])
    return records


def test_every_outbox_record_is_exactly_its_contract(store: SqliteStore, tmp_path: Path):
    service = UsersService(
        UsersStore(store), KeyRing(tmp_path / "keys.json"), passwords=Passwords(CHEAP)
    )
    user = service.registration.sign_up(
        "alice", "Alice@Example.com", "correct horse 1", request_id="r1"
    )
    service.addresses.add(user["id"], "work@example.com", request_id="r2")
    assert service.registration.delete(user["id"], request_id="r3")

    records = drain(store)
    assert [r["type"] for r in records] == [
        contracts.USER_CREATED,
        contracts.USER_EMAIL_ADDED,
        contracts.USER_DELETED,
    ]
    for record in records:
        model = contracts.PAYLOADS[record["type"]]
        payload = record["payload"]
        # Exact: every field of the model, nothing else, the model's types.
        built = model.model_validate(payload)
        assert built.to_payload() == payload
        assert contracts.parse_payload(record["type"], payload) == built
        # The record is a whole envelope the relay can publish.
        envelope = Envelope.from_dict(record)
        assert envelope.type == model.TYPE and envelope.payload == payload
    assert [r["request_id"] for r in records] == ["r1", "r2", "r3"]

    created, added, deleted = (r["payload"] for r in records)
    assert created == {"user_id": user["id"], "username": "alice", "email": "alice@example.com"}
    assert set(added) == set(contracts.UserEmailAdded.model_fields)
    assert added["user_id"] == user["id"] and added["email"] == "work@example.com"
    assert deleted == {"user_id": user["id"]}


def test_a_payload_with_a_field_the_contract_lacks_is_not_exact():
    """The check above is strict: one unknown key or one mistyped value fails it."""
    payload = {"user_id": "u1", "username": "alice", "email": "a@example.com"}
    contracts.UserCreated.model_validate(payload)
    with pytest.raises(ValueError):
        contracts.UserCreated.model_validate({**payload, "role": "user"})
    with pytest.raises(ValueError):
        contracts.UserCreated.model_validate({**payload, "user_id": 1})
