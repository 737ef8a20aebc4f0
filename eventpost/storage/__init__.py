"""The storage port and its adapters. Services import only from here."""

from eventpost.storage.factory import open_store
from eventpost.storage.lazy import LazyCollection
from eventpost.storage.port import (
    AnyOf,
    Collection,
    CollectionSpec,
    DuplicateKey,
    InvalidCursor,
    Near,
    NotFound,
    OutboxEvent,
    Page,
    ParkedEvent,
    Query,
    Range,
    StorageError,
    Store,
    VersionConflict,
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
