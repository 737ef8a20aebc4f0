"""The race of issue 14: a reminder created in the instant after its event's ``event.deleted``
was handled (the events service still answered with the event) must end cancelled, never sent.

A POST /v1/notifications (through the app, on a real store: SQLite and the MongoDB adapter over
mongomock) and the ``event.deleted`` handler run in two threads whose store steps are paused
and released in a chosen order: the creation's insert (I) and tombstone read (C), the
handler's tombstone write (T) and its scan-and-cancel (S). Every order the code allows
(I before C, T before S) is run; each ends with the one reminder ``cancelled``, its owner told
exactly once (by the 422 or by the cancellation email) and nothing dispatched."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from eventpost.messaging import Envelope
from services.notifications import domain
from services.notifications.consumers import NotificationHandlers
from services.notifications.dispatcher import ReminderDispatcher
from services.notifications.store import NotificationsStore
from tests.unit.test_notifications_support import any_store, api  # noqa: F401 - fixtures

EV = "ev1"
#: A safety net against a hung thread, never a timing assertion.
WAIT = 30.0

#: (thread, NotificationsStore method) -> step label.
STEPS = {
    ("create", "insert"): "I",
    ("create", "tombstone_of"): "C",
    ("consumer", "record_tombstone"): "T",
    ("consumer", "scheduled_ids_of"): "S",
}
#: The last step of each thread lasts until the thread's work is over.
LAST = {"create": "C", "consumer": "S"}


class Interleaving:
    """Pause hooks on :class:`NotificationsStore`: each labelled step waits until released,
    and the next is released only once the one before has finished."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        labels = [*STEPS.values()]
        self.arrived = {label: threading.Event() for label in labels}
        self.go = {label: threading.Event() for label in labels}
        self.done = {label: threading.Event() for label in labels}
        for method in {method for _, method in STEPS}:
            original = getattr(NotificationsStore, method)
            monkeypatch.setattr(NotificationsStore, method, self._paused(method, original))

    def _paused(self, method: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def paused(store: NotificationsStore, *args: Any, **kwargs: Any) -> Any:
            label = STEPS.get((threading.current_thread().name, method))
            if label is None:
                return original(store, *args, **kwargs)
            self.arrived[label].set()
            assert self.go[label].wait(WAIT)
            try:
                return original(store, *args, **kwargs)
            finally:
                if label not in LAST.values():
                    self.done[label].set()

        return paused

    def run(self, order: str, **work: Callable[[], Any]) -> dict[str, Any]:
        """Run each of ``work`` (keys: thread names) in its thread, the steps in ``order``."""
        results: dict[str, Any] = {}

        def run_one(name: str) -> None:
            try:
                results[name] = work[name]()
            finally:
                self.done[LAST[name]].set()

        threads = [threading.Thread(target=run_one, args=(name,), name=name) for name in work]
        for thread in threads:
            thread.start()
        try:
            for label in order:
                assert self.arrived[label].wait(WAIT), f"step {label} was never reached"
                self.go[label].set()
                assert self.done[label].wait(WAIT), f"step {label} never finished"
        finally:
            for event in self.go.values():
                event.set()
            for thread in threads:
                thread.join(WAIT)
        return results


@pytest.fixture
def ann(api):  # noqa: F811
    api.others.add_event(EV, title="Jazz night")
    return api.others.add_user("ann", "ann@example.test")


def cancellation_mails(store) -> list[str]:
    return [
        job["payload"]["idempotency_key"]
        for job in store.iter_outbox()
        if job["type"] == "email.send" and job["payload"].get("template") == "event_cancelled"
    ]


def reminder_mails(store) -> list[str]:
    return [
        job["payload"]["idempotency_key"]
        for job in store.iter_outbox()
        if job["type"] == "email.send" and job["payload"].get("template") == "reminder"
    ]


#: Every order of the four steps with I before C and T before S, and what it must give: the
#: creation's status and whether the handler's scan found the reminder still scheduled (and
#: so cancelled it with an email).
ORDERS = {
    "TSIC": (422, False),  # the deletion handled entirely first: the creation sees it
    "TISC": (422, True),
    "TICS": (422, False),
    "ITSC": (422, True),
    "ITCS": (422, False),
    "ICTS": (201, True),  # the creation entirely first: the handler cancels it
}


@pytest.mark.parametrize("order", ORDERS)
def test_a_reminder_racing_its_events_deletion_ends_cancelled(api, ann, monkeypatch, order):  # noqa: F811
    status, mailed = ORDERS[order]
    handlers = NotificationHandlers(api.store, clock=api.clock)
    deleted = Envelope.new("event.deleted", {"event_id": EV, "event": api.others.events[EV]})
    hooks = Interleaving(monkeypatch)

    results = hooks.run(
        order,
        create=lambda: api.call(
            "POST", "/v1/notifications", ann, json={"event_id": EV, "before": "PT2H"}
        ),
        consumer=lambda: handlers.on_event_change(deleted),
    )

    resp = results["create"]
    assert resp.status_code == status, resp.text
    if status == 422:
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json["errors"] == [{"field": "event_id", "message": "no such event"}]
    docs = list(NotificationsStore(api.store).iter_matching({"event_id": EV}))
    assert [doc["status"] for doc in docs] == ["cancelled"]
    expected = [f"event_cancelled:{docs[0]['id']}"] if mailed else []
    assert cancellation_mails(api.store) == expected

    # A redelivered event.deleted and the dispatcher long after: nothing more.
    handlers.on_event_change(deleted)
    api.clock.advance(days=60)
    assert ReminderDispatcher(api.store, clock=api.clock).run_once() == 0
    assert reminder_mails(api.store) == []
    assert cancellation_mails(api.store) == expected


def test_without_a_deletion_the_creation_is_untouched(api, ann):  # noqa: F811
    resp = api.call("POST", "/v1/notifications", ann, json={"event_id": EV, "before": "PT2H"})
    assert resp.status_code == 201
    assert resp.json["status"] == "scheduled"
    assert NotificationsStore(api.store).tombstone_of(EV) is None


def test_the_dispatcher_never_sends_for_a_tombstoned_event(api, ann):  # noqa: F811
    # The handler stopped after its tombstone (a crash before the scan; the message will be
    # redelivered later): the dispatcher comes first and cancels instead of sending.
    resp = api.call("POST", "/v1/notifications", ann, json={"event_id": EV, "before": "PT2H"})
    rid = resp.json["id"]
    reminders = NotificationsStore(api.store)
    assert reminders.record_tombstone(EV, "2026-11-01T12:00:00.000000Z")
    assert not reminders.record_tombstone(EV, "2026-11-01T12:00:01.000000Z")  # idempotent
    api.clock.advance(days=60)

    assert ReminderDispatcher(api.store, clock=api.clock).run_once() == 0

    doc = reminders.get(rid)
    assert doc["status"] == domain.CANCELLED
    assert doc["lease_owner"] is None
    assert reminder_mails(api.store) == []
    assert cancellation_mails(api.store) == [f"event_cancelled:{rid}"]
    # The redelivered event.deleted finds nothing left to do.
    handlers = NotificationHandlers(api.store, clock=api.clock)
    handlers.on_event_change(Envelope.new("event.deleted", {"event_id": EV, "event": {}}))
    assert cancellation_mails(api.store) == [f"event_cancelled:{rid}"]
    assert reminders.tombstone_of(EV)["deleted_at"] == "2026-11-01T12:00:00.000000Z"


def test_the_handler_records_the_deletion_time_of_the_message(api):  # noqa: F811
    handlers = NotificationHandlers(api.store, clock=api.clock)
    deleted = Envelope.new("event.deleted", {"event_id": "gone", "event": {}})
    handlers.on_event_change(deleted)
    assert NotificationsStore(api.store).tombstone_of("gone") == {
        "id": "gone",
        "deleted_at": deleted.occurred_at,
        "version": 1,
    }
