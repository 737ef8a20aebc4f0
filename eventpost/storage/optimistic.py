"""The one retry helper for optimistic updates.

Every change to a document is read, decide, write with ``expected_version``; when somebody
wrote in between the store raises :class:`VersionConflict` and the change is decided again on
what is there now. ``attempt`` is that read-decide-write: it returns the result (or raises
anything else to stop at once); after ``tries`` lost races :class:`KeptChanging` is raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from eventpost.errors import Conflict
from eventpost.storage.errors import VersionConflict

T = TypeVar("T")

#: Lost races before giving up: enough for any real contention, few enough to answer fast.
DEFAULT_TRIES = 5


class KeptChanging(Conflict):
    """409: the document changed under every try; the client may try again."""


def retry_on_conflict(
    attempt: Callable[[], T], *, what: str = "document", tries: int = DEFAULT_TRIES
) -> T:
    """``attempt()`` until it does not lose a race (at most ``tries`` times)."""
    for _ in range(tries):
        try:
            return attempt()
        except VersionConflict:
            continue
    raise KeptChanging(f"The {what} kept changing; try again.")
