"""The one way to open a service's store: :func:`open_store`.

It lives beside the port, not in it, because it picks an adapter: the port imports none.
Nothing connects here; both adapters connect on first use, so an app built with a store
whose database is down still starts (``/ready`` answers 503 until the database is back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from eventpost.settings import Settings
    from eventpost.storage.port import Store

#: SQLite's durability levels (see :class:`eventpost.storage.sqlite.SqliteStore`).
Synchronous = Literal["FULL", "NORMAL", "EXTRA"]


def open_store(
    settings: Settings, service: str | None = None, *, sqlite_synchronous: Synchronous = "FULL"
) -> Store:
    """The store of ``service`` (default: ``settings.service``): MongoDB database
    ``eventpost_<service>`` when ``MONGODB_URL`` is set, else the SQLite file
    ``DATA_DIR/<service>.sqlite3`` (``sqlite_synchronous``: its durability level; ``NORMAL``
    may lose the last writes on a power cut, never on a process crash, and costs no fsync
    per write)."""
    name = service or settings.service
    if settings.mongodb_url:
        from eventpost.storage.mongo import MongoStore

        return MongoStore(settings.mongodb_url, database=f"eventpost_{name}")
    from eventpost.storage.sqlite import SqliteStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteStore(settings.data_dir / f"{name}.sqlite3", synchronous=sqlite_synchronous)
