"""The launcher's supervision: a part that dies is started again after a backoff; only a part
that keeps dying stops the suite.

:class:`Supervisor` holds no thread and reads no clock of its own: the launcher calls
:meth:`Supervisor.tick` every half second with the parts, and tests call it with an injected
clock, fake processes and a fake ``spawn``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from eventpost.loops import Backoff


class Process(Protocol):
    """What the supervisor needs of a child process (``subprocess.Popen`` has it)."""

    pid: int

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""


class Supervised(Protocol):
    """What the supervisor needs of a part (``devtools.launcher.Part`` has it)."""

    name: str
    process: Process | None


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart and when to give up.

    A part that dies ``max_deaths`` times within ``window`` seconds stops the suite; before
    that each death waits the next delay of a :class:`eventpost.loops.Backoff` (``base``,
    doubling up to ``cap``, with jitter) and starts the part again; a part that then stays up
    ``stable_after`` seconds starts from ``base`` again at its next death."""

    max_deaths: int = 5
    window: float = 60.0
    base: float = 0.5
    cap: float = 10.0
    stable_after: float = 30.0


@dataclass
class _PartState:
    backoff: Backoff
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    last_code: int | None = None
    started_at: float = 0.0
    restarts: int = 0


class GiveUp(Exception):
    """A part died too often; the message says which and how often."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class Supervisor:
    """Restarts dead parts with backoff; raises :class:`GiveUp` from :meth:`tick` for a part
    that keeps dying. ``spawn(part)`` starts a part (again), ``say(line)`` reports."""

    def __init__(
        self,
        spawn: Callable[[Supervised], None],
        say: Callable[[str], None],
        *,
        clock: Callable[[], float],
        policy: RestartPolicy | None = None,
        rand: Callable[[], float] = random.random,
        cleanup: Callable[[Supervised], None] = lambda part: None,
    ) -> None:
        self.spawn = spawn
        self.say = say
        self.clock = clock
        self.policy = policy or RestartPolicy()
        self.rand = rand
        self.cleanup = cleanup
        self._states: dict[str, _PartState] = {}

    def _state(self, name: str) -> _PartState:
        state = self._states.get(name)
        if state is None:
            backoff = Backoff(self.policy.base, self.policy.cap, self.rand)
            state = self._states[name] = _PartState(backoff, started_at=self.clock())
        return state

    def restarts(self, name: str) -> int:
        """How many times ``name`` was started again."""
        return self._state(name).restarts

    def pending(self, name: str) -> bool:
        """Whether ``name`` is dead and waiting for its restart."""
        return self._state(name).restart_at is not None

    def tick(self, parts: Iterable[Supervised]) -> None:
        """Look at every part once: restart the ones whose wait is over, schedule a restart
        for the ones that died; raises :class:`GiveUp` for one that died too often."""
        now = self.clock()
        for part in parts:
            state = self._state(part.name)
            if state.restart_at is not None:
                if now >= state.restart_at:
                    self._restart(part, state, now)
                continue
            if part.process is None:
                continue
            code = part.process.poll()
            if code is None:
                if state.backoff.failures and now - state.started_at >= self.policy.stable_after:
                    state.backoff.reset()
                continue
            self._died(part, state, code, now)

    def _died(self, part: Supervised, state: _PartState, code: int, now: float) -> None:
        self.cleanup(part)
        state.last_code = code
        state.deaths.append(now)
        while state.deaths and now - state.deaths[0] > self.policy.window:
            state.deaths.popleft()
        deaths = len(state.deaths)
        if deaths >= self.policy.max_deaths:
            raise GiveUp(
                part.name,
                f"{part.name} died {deaths} times within {self.policy.window:.0f} s "
                f"(last exit code {code}); giving up and stopping the suite",
            )
        delay = state.backoff.next_delay()
        state.restart_at = now + delay
        self.say(
            f"{part.name} died (exit code {code}); restarting it in {delay:.1f} s "
            f"({deaths} of {self.policy.max_deaths} deaths allowed within "
            f"{self.policy.window:.0f} s)"
        )

    def _restart(self, part: Supervised, state: _PartState, now: float) -> None:
        state.restart_at = None
        state.started_at = now
        state.restarts += 1
        try:
            self.spawn(part)
        except OSError as exc:  # could not even start: counts as one more death
            self.say(f"{part.name} could not be started again: {exc}")
            self._died(part, state, -1, now)
            return
        pid = part.process.pid if part.process is not None else "?"
        self.say(f"{part.name} restarted (pid {pid}, restart {state.restarts})")
