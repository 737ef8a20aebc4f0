"""The one loop every background worker runs: rounds until stopped, backing off on errors.

Relays, the dispatcher and the AMQP consumers all do the same thing: run a round, wait,
repeat; when a round fails (broker gone, store locked), log it and wait longer each time,
with jitter, so many workers that lost a broker together do not come back together. A
successful round resets the wait.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable


def backoff_delay(
    failures: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with jitter: ``min(cap, base * 2**failures)`` scaled by a random
    factor in [0.5, 1)."""
    return min(cap, base * (2 ** min(failures, 32))) * (0.5 + rand() / 2)


class Backoff:
    """Counts consecutive failures and says how long to wait after the next one."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rand: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self.rand = rand
        self.failures = 0

    def next_delay(self) -> float:
        """The wait after one more failure (and count it)."""
        delay = backoff_delay(self.failures, self.base, self.cap, self.rand)
        self.failures += 1
        return delay

    def reset(self) -> None:
        """A success: the next failure waits ``base`` again."""
        self.failures = 0


def wait_for(stop: threading.Event, seconds: float, wake: threading.Event | None = None) -> None:
    """Wait ``seconds``, or less if ``stop`` (or ``wake``, when given) is set meanwhile."""
    if seconds <= 0:
        return
    if wake is None:
        stop.wait(seconds)
        return
    deadline = time.monotonic() + seconds
    while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
        if wake.wait(min(remaining, 0.2)):
            return


def run_rounds(
    round_: Callable[[], float],
    stop: threading.Event,
    *,
    what: str,
    logger: logging.Logger,
    backoff: Backoff | None = None,
    wake: threading.Event | None = None,
) -> None:
    """Call ``round_`` until ``stop`` is set.

    ``round_`` returns how many seconds to wait before the next round (0: go straight on).
    When it raises, the error is logged as ``"<what> failed; retrying"`` and the loop waits
    ``backoff``'s next delay (``wake`` is ignored then: a failing round is not hurried).
    After a good round the loop waits for its answer, or until ``wake`` is set; ``wake`` is
    cleared before each round.
    """
    backoff = backoff or Backoff()
    while not stop.is_set():
        if wake is not None:
            wake.clear()
        try:
            wait = round_()
        except Exception as exc:
            delay = backoff.next_delay()
            logger.warning(
                "%s failed; retrying",
                what,
                exc_info=True,
                extra={"error": repr(exc), "retry_in_seconds": round(delay, 2)},
            )
            wait_for(stop, delay)
            continue
        backoff.reset()
        wait_for(stop, wait, wake)
