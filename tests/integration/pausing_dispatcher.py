"""The dispatcher with a fault injected for the crash tests (test code only, never deployed):
``python -m tests.integration.pausing_dispatcher --pause-after-claim SECONDS [dispatcher
options]`` runs ``python -m services.notifications.dispatcher`` whose dispatcher holds each
batch of claims that long before handing it over (so a test can kill it while it holds them,
or let two dispatchers claim side by side)."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from typing import Any

from services.notifications.dispatcher import ReminderDispatcher, main

log = logging.getLogger(__name__)


def pausing(seconds: float) -> type[ReminderDispatcher]:
    """A :class:`ReminderDispatcher` that sleeps ``seconds`` after every batch it claimed."""

    class PausingDispatcher(ReminderDispatcher):
        def claim(self) -> list[dict[str, Any]]:
            claimed = super().claim()
            if claimed:
                log.warning("holding claims", extra={"seconds": seconds})
                time.sleep(seconds)
            return claimed

    return PausingDispatcher


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``--pause-after-claim`` and run the dispatcher's ``main`` with the rest."""
    parser = argparse.ArgumentParser(description="The dispatcher, holding its claims a while.")
    parser.add_argument("--pause-after-claim", type=float, required=True, help="seconds")
    args, rest = parser.parse_known_args(argv)
    return main(rest, dispatcher_type=pausing(args.pause_after_claim))


if __name__ == "__main__":
    raise SystemExit(run())
