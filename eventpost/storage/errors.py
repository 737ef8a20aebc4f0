"""The errors the storage port raises (see :mod:`eventpost.storage.port`)."""

from __future__ import annotations

from collections.abc import Sequence


class StorageError(Exception):
    """Base of every error the storage port raises."""


class DuplicateKey(StorageError):
    """A unique constraint (including the ``id``) would be broken."""

    def __init__(self, fields: Sequence[str] = ()) -> None:
        self.fields = tuple(fields)
        super().__init__(f"duplicate key on {', '.join(self.fields) or 'a unique index'}")


class NotFound(StorageError):
    """No document with that id."""


class VersionConflict(StorageError):
    """The document's version is not the one the caller expected (optimistic locking)."""


class InvalidCursor(StorageError, ValueError):
    """:attr:`Query.cursor` is not a ``next_cursor`` of a query with the same sort (malformed,
    tampered with, or from another query): a bad request parameter (422)."""
