"""The storage port and its adapters. Services import only from here."""

from eventpost.storage.errors import (
    DuplicateKey,
    InvalidCursor,
    NotFound,
    StorageError,
    VersionConflict,
)
from eventpost.storage.factory import open_store
from eventpost.storage.lazy import LazyCollection
from eventpost.storage.port import Collection, Store
from eventpost.storage.values import (
    AnyOf,
    CollectionSpec,
    Near,
    OutboxEvent,
    Page,
    ParkedEvent,
    Query,
    Range,
)

__all__ = [
    "AnyOf",
    "Collection",
    "CollectionSpec",
    "DuplicateKey",
    "InvalidCursor",
    "LazyCollection",
    "Near",
    "NotFound",
    "OutboxEvent",
    "Page",
    "ParkedEvent",
    "Query",
    "Range",
    "StorageError",
    "Store",
    "VersionConflict",
    "open_store",
]
