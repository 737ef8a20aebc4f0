"""Running several consumers, relays and other loops in one process, stopped on SIGTERM.

A worker process (the email-sender, a service's background part) builds its consumers and
relays, hands them to a :class:`Worker` and calls :meth:`Worker.run` from the main thread::

    worker = Worker("notifications-worker")
    worker.add_consumer(Consumer(settings.amqp_url, "notifications.user-deleted",
                                 ["user.deleted"], handle, retry_delays=settings.retry_delays))
    worker.add_loop("relay", relay_loop)  # opens its publisher in its own thread
    raise SystemExit(worker.run())

Each part runs in a thread of its own. SIGTERM or SIGINT (or :meth:`Worker.stop`) stops every
part the way it stops cleanly (a consumer finishes and settles the message in hand, a relay
finishes its publish) and ``run`` returns 0. When a part crashes, the others are stopped too
and ``run`` returns 1, so a supervisor restarts the process.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventpost.messaging.consumer import Consumer

log = logging.getLogger(__name__)

#: A loop that runs until its event is set (the shape of :meth:`OutboxRelay.run`).
Loop = Callable[[threading.Event], None]

_POLL_SECONDS = 0.2


@dataclass
class _Part:
    name: str
    run: Callable[[], None]
    stop: Callable[[], None]
    thread: threading.Thread | None = None
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event)

    def main(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self.error = exc
            log.exception("worker part crashed", extra={"part": self.name})
        finally:
            self.finished.set()


class Worker:
    """Runs parts (consumers, relays, loops) in threads until told to stop."""

    def __init__(self, name: str = "worker") -> None:
        self.name = name
        self._parts: list[_Part] = []
        self._stop_requested = False

    def add_consumer(self, consumer: Consumer, name: str | None = None) -> None:
        """Run ``consumer`` (stopped with :meth:`Consumer.stop`)."""
        self._parts.append(_Part(name or f"consumer:{consumer.queue}", consumer.run, consumer.stop))

    def add_loop(self, name: str, loop: Loop) -> None:
        """Run ``loop(stop_event)``, which must return soon after the event is set (e.g. a
        reminder dispatcher). A pika connection the loop uses it should open and close
        itself, so it stays in its thread; a :class:`~eventpost.storage.Store` may be shared
        by every part (the SQLite adapter keeps a connection per thread, MongoDB's client is
        thread-safe)."""
        event = threading.Event()
        self._parts.append(_Part(name, lambda: loop(event), event.set))

    def stop(self) -> None:
        """Ask :meth:`run` to stop every part. Safe from signal handlers and other threads:
        it only sets a flag that ``run`` polls."""
        self._stop_requested = True

    def run(self, *, handle_signals: bool = True, stop_timeout: float = 60.0) -> int:
        """Start every part and wait; on SIGTERM/SIGINT (when ``handle_signals`` and this is
        the main thread) or :meth:`stop`, stop them all and wait up to ``stop_timeout``
        seconds for them. Returns 0 after a requested stop, 1 when a part crashed or ended
        by itself or did not stop in time."""
        if not self._parts:
            raise ValueError("a worker needs at least one part")
        previous = self._install_signals() if handle_signals else {}
        try:
            for part in self._parts:
                part.thread = threading.Thread(
                    target=part.main, name=f"{self.name}:{part.name}", daemon=True
                )
                part.thread.start()
            log.info("worker started", extra={"parts": [p.name for p in self._parts]})
            while not self._stop_requested and not any(p.finished.is_set() for p in self._parts):
                time.sleep(_POLL_SECONDS)
            ended = [p.name for p in self._parts if p.finished.is_set()]
            if self._stop_requested:
                log.info("worker stopping")
            else:
                log.error(
                    "a worker part ended by itself; stopping the rest", extra={"parts": ended}
                )
            return self._stop_all(stop_timeout, clean=self._stop_requested)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_all(self, timeout: float, *, clean: bool) -> int:
        for part in self._parts:
            try:
                part.stop()
            except Exception:
                log.exception("could not stop a worker part", extra={"part": part.name})
        deadline = time.monotonic() + timeout
        stuck = []
        for part in self._parts:
            if not part.finished.wait(max(0.0, deadline - time.monotonic())):
                stuck.append(part.name)
        if stuck:
            log.error("worker parts did not stop in time", extra={"parts": stuck})
        crashed = [p.name for p in self._parts if p.error is not None]
        log.info("worker stopped", extra={"crashed": crashed, "stuck": stuck})
        return 0 if clean and not stuck and not crashed else 1

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            self.stop()

        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
        return previous
