"""The events use cases on a real SQLite store: the messages they queue keep their contracts
exactly (and give notifications what it reads), and the optimistic loops of patch and
delete decide again after a lost race, except under ``If-Match`` (412 at once)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from eventpost import contracts
from eventpost.errors import Conflict, Missing, PreconditionFailed
from eventpost.storage import VersionConflict
from eventpost.storage.optimistic import DEFAULT_TRIES
from eventpost.storage.sqlite import SqliteStore
from eventpost.validation import parse_model
from services.events.cache import StampedCache
from services.events.domain import EventIn, EventPatch, etag_of, to_public
from services.events.service import EventsService
from services.events.store import EventsStore
from services.notifications.domain import cancelled_job, event_snapshot
from tests.integration.test_events_support import event_body

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ADMIN = "admin-1"


class RacedStore(EventsStore):
    """An events store where somebody else writes just before each of the next ``races``
    updates or deletes (they raise VersionConflict, as a lost race does)."""

    races = 0
    tries = 0

    def _race(self) -> None:
        self.tries += 1
        if self.races:
            self.races -= 1
            raise VersionConflict("somebody wrote first")

    def update(self, *args, **kwargs):
        self._race()
        return super().update(*args, **kwargs)

    def delete(self, *args, **kwargs):
        self._race()
        return super().delete(*args, **kwargs)


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(tmp_path / "events.sqlite3", synchronous="NORMAL")
    yield store
    store.close()


@pytest.fixture
def events(store) -> RacedStore:
    return RacedStore(store, clock=lambda: NOW)


@pytest.fixture
def service(events) -> EventsService:
    return EventsService(events, StampedCache(), clock=lambda: NOW)


def _body(**changes) -> EventIn:
    return parse_model(json.dumps(event_body(**changes)).encode(), EventIn)


def _patch(**fields) -> EventPatch:
    return parse_model(json.dumps(fields).encode(), EventPatch)


def test_a_cached_event_is_rendered_again_only_after_a_write_to_it(service):
    first = service.create(_body(), by=ADMIN, request_id=None)["id"]
    second = service.create(_body(title="Second"), by=ADMIN, request_id=None)["id"]
    assert service.get(first).public["title"] == event_body()["title"]
    service.get(second)
    misses = service.documents.misses
    service.patch(second, _patch(title="Second, moved"), if_match=None, by=ADMIN, request_id=None)
    assert service.get(first).version == 1
    assert service.documents.misses == misses  # a write to another event: still cached
    assert service.get(second).public["title"] == "Second, moved"
    assert service.documents.misses == misses + 1
    service.delete(first, if_match=None, by=ADMIN, request_id=None)
    with pytest.raises(Missing):
        service.get(first)


def test_every_queued_message_keeps_its_contract_exactly(service, store):
    created = service.create(_body(), by=ADMIN, request_id="req-1")
    event_id = created["id"]
    service.patch(
        event_id,
        _patch(starts_at="2026-12-01T21:00:00+01:00", place={"address": None}),
        if_match=None,
        by=ADMIN,
        request_id="req-2",
    )
    moved = to_public(service.store.get(event_id))
    service.delete(event_id, if_match=frozenset({"v2"}), by=ADMIN, request_id="req-3")

    records = list(store.iter_outbox())
    assert [r["type"] for r in records] == [
        contracts.EVENT_CREATED,
        contracts.EVENT_UPDATED,
        contracts.EVENT_DELETED,
    ]
    assert [r["request_id"] for r in records] == ["req-1", "req-2", "req-3"]
    for record in records:
        model = contracts.PAYLOADS[record["type"]]
        # Exact: the models forbid unknown keys and coercion, so no key is extra or mistyped.
        assert model.model_validate(record["payload"]).to_payload() == record["payload"]

    created_msg, updated_msg, deleted_msg = (
        contracts.parse_payload(r["type"], r["payload"]) for r in records
    )
    assert created_msg.event == to_public(created)
    # What notifications reads of event.updated: the event (with its id) and the old start.
    assert updated_msg.event == moved
    assert updated_msg.old_starts_at == created["starts_at"]
    snapshot = event_snapshot(updated_msg.event)
    assert snapshot["starts_at"] == "2026-12-01T20:00:00.000000Z"
    assert snapshot["place"]["address"] is None
    # ... and of event.deleted: the id, and the event as it was for the cancellation email.
    assert deleted_msg.event_id == event_id == deleted_msg.event["id"]
    assert deleted_msg.event == moved
    reminder = {"id": "r1", "email": "a@example.org", "event_id": event_id, "event": snapshot}
    assert cancelled_job(reminder, deleted_msg.event).context["event"]["title"] == "Jazz night"


def test_a_patch_that_lost_a_race_is_merged_again(service, events):
    event_id = service.create(_body(), by=ADMIN, request_id=None)["id"]
    events.races = 2
    saved = service.patch(
        event_id, _patch(title="Blues night"), if_match=None, by=ADMIN, request_id=None
    )
    assert saved["title"] == "Blues night" and events.tries == 3


def test_under_if_match_a_lost_race_is_412_at_once(service, events):
    event_id = service.create(_body(), by=ADMIN, request_id=None)["id"]
    events.races = 1
    with pytest.raises(PreconditionFailed):
        service.patch(
            event_id, _patch(title="x"), if_match=frozenset({"v1"}), by=ADMIN, request_id=None
        )
    assert events.tries == 1
    events.races = 1
    with pytest.raises(PreconditionFailed):
        service.delete(event_id, if_match=frozenset({"*"}), by=ADMIN, request_id=None)
    assert events.tries == 2
    assert etag_of(events.get(event_id)) == "v1"


def test_an_event_that_keeps_changing_is_409(service, events):
    event_id = service.create(_body(), by=ADMIN, request_id=None)["id"]
    events.races = DEFAULT_TRIES
    with pytest.raises(Conflict, match=r"^The event kept changing; try again\.$"):
        service.delete(event_id, if_match=None, by=ADMIN, request_id=None)
    assert events.tries == DEFAULT_TRIES
    service.delete(event_id, if_match=None, by=ADMIN, request_id=None)
    with pytest.raises(Missing):
        service.get(event_id)
