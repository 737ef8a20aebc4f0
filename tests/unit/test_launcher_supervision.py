"""The launcher's supervision (devtools.supervisor) and --replicas parsing, with an injected
clock and fake processes: restarts with backoff, said; only a part that keeps dying gives up."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from devtools.launcher import instances_env, parse_replicas, suite_parts
from devtools.supervisor import GiveUp, RestartPolicy, Supervisor
from eventpost.settings import Settings


class FakeProcess:
    _next_pid = 1000

    def __init__(self) -> None:
        FakeProcess._next_pid += 1
        self.pid = FakeProcess._next_pid
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


@dataclass
class FakePart:
    name: str
    process: FakeProcess | None = field(default_factory=FakeProcess)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _supervisor(policy: RestartPolicy | None = None):
    clock = Clock()
    said: list[str] = []
    spawned: list[str] = []
    cleaned: list[str] = []

    def spawn(part):
        spawned.append(part.name)
        part.process = FakeProcess()

    sup = Supervisor(
        spawn,
        said.append,
        clock=clock,
        policy=policy or RestartPolicy(max_deaths=5, window=60, base=1.0, cap=8.0),
        rand=lambda: 1.0,  # no jitter: delays are base * 2**n exactly
        cleanup=lambda part: cleaned.append(part.name),
    )
    return sup, clock, said, spawned, cleaned


def test_a_dead_part_is_restarted_after_its_backoff_and_it_is_said():
    sup, clock, said, spawned, cleaned = _supervisor()
    events, users = FakePart("events-1"), FakePart("users")
    parts = [events, users]
    sup.tick(parts)
    assert spawned == [] and said == []

    events.process.code = -9
    sup.tick(parts)
    assert cleaned == ["events-1"]
    assert sup.pending("events-1")
    assert said[-1].startswith("events-1 died (exit code -9); restarting it in 1.0 s")
    clock.now += 0.5
    sup.tick(parts)
    assert spawned == []  # still waiting out the backoff
    clock.now += 0.5
    sup.tick(parts)
    assert spawned == ["events-1"]
    assert not sup.pending("events-1")
    assert sup.restarts("events-1") == 1
    assert said[-1] == f"events-1 restarted (pid {events.process.pid}, restart 1)"
    assert users.process.poll() is None


def test_the_backoff_grows_with_each_death_and_resets_once_the_part_stays_up():
    sup, clock, said, _, _ = _supervisor(
        RestartPolicy(max_deaths=10, window=60, base=1.0, cap=8.0, stable_after=30)
    )
    part = FakePart("gateway")
    delays = []
    for _ in range(5):
        part.process.code = 1
        sup.tick([part])
        delays.append(said[-1].split("restarting it in ")[1].split(" s")[0])
        clock.now += 9
        sup.tick([part])
    assert delays == ["1.0", "2.0", "4.0", "8.0", "8.0"]  # doubling, capped
    clock.now += 31  # up long enough: the next death waits base again
    sup.tick([part])
    part.process.code = 1
    clock.now += 100  # and the old deaths are outside the window
    sup.tick([part])
    assert "restarting it in 1.0 s" in said[-1]


def test_a_part_that_dies_five_times_within_a_minute_stops_the_suite():
    sup, clock, _, spawned, _ = _supervisor()
    part = FakePart("notifications")
    for _ in range(4):
        part.process.code = 3
        sup.tick([part])
        clock.now += 10
        sup.tick([part])
    assert spawned == ["notifications"] * 4
    part.process.code = 3
    with pytest.raises(GiveUp) as raised:
        sup.tick([part])
    assert raised.value.name == "notifications"
    assert "notifications died 5 times within 60 s (last exit code 3)" in str(raised.value)
    assert "stopping the suite" in str(raised.value)


def test_deaths_spread_over_more_than_the_window_never_give_up():
    sup, clock, _, spawned, _ = _supervisor(
        RestartPolicy(max_deaths=3, window=60, base=1.0, cap=1.0)
    )
    part = FakePart("events")
    for _ in range(10):
        part.process.code = 1
        sup.tick([part])
        clock.now += 31  # two deaths per minute at most
        sup.tick([part])
    assert len(spawned) == 10


def test_a_part_that_cannot_even_be_spawned_counts_as_a_death():
    clock = Clock()
    said: list[str] = []

    def spawn(part):
        raise OSError("no such file")

    sup = Supervisor(
        spawn,
        said.append,
        clock=clock,
        policy=RestartPolicy(max_deaths=2, window=60, base=1.0, cap=1.0),
        rand=lambda: 1.0,
    )
    part = FakePart("users")
    part.process.code = 1
    sup.tick([part])
    clock.now += 1
    with pytest.raises(GiveUp):
        sup.tick([part])
    assert any("could not be started again: no such file" in line for line in said)


def test_replicas_are_parsed_and_bad_ones_named():
    assert parse_replicas("events=2, notifications=3") == {"events": 2, "notifications": 3}
    assert parse_replicas("") == {}
    for bad, words in [
        ("events", "SERVICE=COUNT"),
        ("dispatcher=2", "SERVICE=COUNT"),
        ("events=two", "not a number"),
        ("events=0", "between 1 and 16"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_replicas(bad)


def test_replicas_get_their_own_ports_and_every_part_their_addresses():
    settings = Settings(events_port=18002, gateway_port=18000)
    parts = suite_parts(settings, False, {"events": 3, "gateway": 2})
    events = [p for p in parts if p.service == "events"]
    assert [p.name for p in events] == ["events-1", "events-2", "events-3"]
    assert events[0].port == 18002
    assert len({p.port for p in events}) == 3
    assert all(p.env == {"EVENTS_PORT": str(p.port)} for p in events)
    assert [p.name for p in parts if p.service == "gateway"] == ["gateway-1", "gateway-2"]
    env = instances_env(parts)
    assert env == {"EVENTS_INSTANCES": ",".join(f"http://127.0.0.1:{p.port}" for p in events)}
    assert [p.name for p in parts if p.service == "users"] == ["users"]
