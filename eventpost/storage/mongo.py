"""The MongoDB storage adapter (pymongo), used when ``MONGODB_URL`` is set.

One database per service. A document is stored with ``id`` as ``_id``, its ``version`` and,
when the collection has a geo field, a GeoJSON point ``_geo`` derived from it (stripped on
read). Indexes: unique ones with a ``$type`` partial filter (missing/null values are not
constrained), the service's indexes (each ending with ``_id`` for keyset pagination), a text
index (language ``none``: no stemming, no stop words) and a 2dsphere index on ``_geo``.
:attr:`CollectionSpec.geo_time_field` is ignored here (it is an index hint of the SQLite
adapter; the planner combines the 2dsphere index with the other conditions by itself).

The outbox is the collection ``_outbox``: ``{_id: event id, seq, body, lease_owner,
lease_until, attempts, last_error, parked_at}`` (the last three once a publish failed).

The client is created lazily, on first use, and again in a forked child process.

Atomicity: every single-document write is atomic. Writes that must go together (a change
and its outbox events, :meth:`MongoStore.transaction`, ``update_many``) run in a
multi-document transaction, kept in a context variable, when the server supports them (a
replica set or a sharded cluster). **On a standalone server (and mongomock) there are no
transactions: those writes happen one after the other**: the change first, then its events,
so a crash in between can lose the events of a saved change, and an exception inside
``transaction()`` does not undo the writes before it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from bson import ObjectId
from pymongo import MongoClient, ReturnDocument
from pymongo.client_session import ClientSession
from pymongo.collection import Collection as PyMongoCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from eventpost.storage._mongo_query import (
    DISTANCE_FIELD,
    GEO_FIELD,
    NON_NULL_TYPES,
    after_filter,
    geojson_point,
    mongo_path,
    mongo_sort,
    near_pipeline,
    sort_values,
    text_filter,
    value_at,
    where_filter,
)
from eventpost.storage._query import FindRequest, SortSpec, check_spec, geo_point
from eventpost.storage.errors import DuplicateKey, NotFound, StorageError, VersionConflict
from eventpost.storage.port import Changes, Collection, Events, Store
from eventpost.storage.values import CollectionSpec, Document, OutboxEvent, Page, ParkedEvent, Where

OUTBOX = "_outbox"
#: Outbox documents waiting to be published (not parked; ``parked_at`` is missing or null).
_WAITING = {"parked_at": None}
_INDEX_CONFLICT_CODES = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict
_INDEX_NAME = re.compile(r"index: (\S+)")

ClientFactory = Callable[[str], Any]


def _default_client(url: str) -> MongoClient:
    return MongoClient(url, appname="eventpost", serverSelectionTimeoutMS=5000, tz_aware=False)


def _json_copy(value: Any) -> Any:
    """A deep copy made of JSON types only (as the SQLite adapter stores); ValueError or
    TypeError for what JSON cannot hold."""
    return json.loads(json.dumps(value, allow_nan=False))


class MongoStore(Store):
    """A service's MongoDB database ``database`` at ``url``.

    ``clock`` gives the time (epoch seconds) outbox leases are measured with;
    ``client_factory(url)`` makes the client (tests pass ``mongomock.MongoClient``)."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        clock: Callable[[], float] = time.time,
        client_factory: ClientFactory = _default_client,
    ) -> None:
        self.url = url
        self.database_name = database
        self._clock = clock
        self._client_factory = client_factory
        self._client: Any = None
        self._client_pid = 0
        self._lock = threading.Lock()
        self._transactions: bool | None = None
        self._outbox_ready = False
        self._collections: dict[str, MongoCollection] = {}
        self._session: ContextVar[ClientSession | None] = ContextVar(
            f"eventpost_mongo_session_{id(self)}", default=None
        )

    # -- client, sessions, transactions --------------------------------------------------

    def client(self) -> Any:
        """The client of this process, created on first use (and again after fork)."""
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            with self._lock:
                if self._client is None or self._client_pid != pid:
                    # a client inherited through fork is abandoned, never used or closed
                    self._client = self._client_factory(self.url)
                    self._client_pid = pid
                    self._transactions = None
                    self._outbox_ready = False
        return self._client

    def database(self) -> Any:
        return self.client()[self.database_name]

    def session(self) -> ClientSession | None:
        """The session of the transaction this context is in, if any."""
        return self._session.get()

    def supports_transactions(self) -> bool:
        """Whether the server runs multi-document transactions (replica set or sharded)."""
        if self._transactions is None:
            try:
                hello = self.client().admin.command("hello")
            except (NotImplementedError, PyMongoError):
                hello = {}
            self._transactions = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
        return self._transactions

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A multi-document transaction for every write in the block (in this context);
        nested use joins the outer one. Without server support the writes are sequential
        (see the module docstring)."""
        if self._session.get() is not None or not self.supports_transactions():
            yield
            return
        with (
            _translated_errors(),
            self.client().start_session() as session,
            session.start_transaction(),
        ):
            token = self._session.set(session)
            try:
                yield
            finally:
                self._session.reset(token)

    @contextmanager
    def _writing(self, together: bool) -> Iterator[ClientSession | None]:
        """The session writes run in; a new transaction when several writes must be atomic
        (``together``) and none is open."""
        if together and self._session.get() is None:
            with self.transaction():
                yield self._session.get()
        else:
            yield self._session.get()

    # -- Store ----------------------------------------------------------------------------

    def collection(self, spec: CollectionSpec) -> MongoCollection:
        cached = self._collections.get(spec.name)
        if cached is not None and cached.spec == spec:
            return cached
        collection = MongoCollection(self, check_spec(spec))
        with _translated_errors():
            collection.ensure_indexes()
        self._collections[spec.name] = collection
        return collection

    def ping(self) -> None:
        with _translated_errors():
            self.database().command("ping")

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None and self._client_pid == os.getpid():
            client.close()

    def drop_database(self) -> None:
        """Delete the whole database (tests)."""
        with _translated_errors():
            self.client().drop_database(self.database_name)

    # -- outbox ---------------------------------------------------------------------------

    def _outbox(self) -> PyMongoCollection:
        outbox = self.database()[OUTBOX]
        if not self._outbox_ready:
            outbox.create_index([("seq", 1)], name="seq")
            self._outbox_ready = True
        return outbox

    def outbox_documents(self, events: Sequence[OutboxEvent]) -> list[dict[str, Any]]:
        """The outbox documents of ``events``, checked before anything is written (internal).
        ``seq`` (ObjectIds grow within a process) keeps the order events were written."""
        docs = []
        for event in events:
            event_id = event.get("id")
            if not isinstance(event_id, str) or not event_id:
                raise ValueError("an outbox event needs a non-empty string id")
            docs.append({"_id": event_id, "seq": ObjectId(), "body": _json_copy(dict(event))})
        return docs

    def write_outbox(self, docs: list[dict[str, Any]], session: ClientSession | None) -> None:
        """Insert outbox documents in ``session`` (internal)."""
        if not docs:
            return
        try:
            self._outbox().insert_many(docs, ordered=True, session=session)
        except (BulkWriteError, DuplicateKeyError) as exc:
            raise DuplicateKey(("outbox.id",)) from exc

    def outbox_claim(self, owner: str, lease_seconds: float, limit: int = 100) -> list[Document]:
        now = self._clock()
        free = {**_WAITING, "$or": [{"lease_until": None}, {"lease_until": {"$lte": now}}]}
        lease = {"$set": {"lease_owner": owner, "lease_until": now + lease_seconds}}
        claimed = []
        with _translated_errors():
            outbox = self._outbox()
            candidates = list(outbox.find(free, {"_id": 1}, sort=[("seq", 1)], limit=limit))
            for candidate in candidates:
                # each event is leased atomically: a concurrent relay may have taken it
                taken = outbox.find_one_and_update(
                    {"_id": candidate["_id"], **free}, lease, return_document=ReturnDocument.AFTER
                )
                if taken is not None:
                    claimed.append(taken["body"])
        return claimed

    def outbox_done(self, event_ids: Sequence[str]) -> None:
        if event_ids:
            with _translated_errors():
                self._outbox().delete_many({"_id": {"$in": list(event_ids)}})

    def outbox_failed(self, event_id: str, reason: str, *, park_after: int) -> int:
        with _translated_errors():
            outbox = self._outbox()
            # only the relay holding the lease reports a failure: no other write races this
            raw = outbox.find_one_and_update(
                {"_id": event_id, **_WAITING},
                {"$inc": {"attempts": 1}, "$set": {"last_error": reason}},
                return_document=ReturnDocument.AFTER,
            )
            if raw is None:
                return 0
            if raw["attempts"] >= park_after:
                outbox.update_one({"_id": event_id}, {"$set": {"parked_at": self._clock()}})
        return raw["attempts"]

    def outbox_parked(self) -> list[ParkedEvent]:
        with _translated_errors():
            raws = self._outbox().find({"parked_at": {"$ne": None}}, sort=[("seq", 1)])
            return [ParkedEvent(r["body"], r["attempts"], r.get("last_error") or "") for r in raws]

    def outbox_pending(self) -> int:
        with _translated_errors():
            return self._outbox().count_documents(_WAITING)

    def iter_outbox(self) -> Iterator[Document]:
        with _translated_errors():
            bodies = [raw["body"] for raw in self._outbox().find(_WAITING, sort=[("seq", 1)])]
        yield from bodies


@contextmanager
def _translated_errors(
    on_duplicate: Callable[[DuplicateKeyError], DuplicateKey] | None = None,
) -> Iterator[None]:
    """Raise the port's errors instead of pymongo's."""
    try:
        yield
    except DuplicateKeyError as exc:
        raise (on_duplicate(exc) if on_duplicate else DuplicateKey()) from exc
    except PyMongoError as exc:
        raise StorageError(f"mongodb: {exc}") from exc


class MongoCollection(Collection):
    """One collection of a :class:`MongoStore` (see :class:`Collection` for the contract)."""

    def __init__(self, store: MongoStore, spec: CollectionSpec) -> None:
        self.spec = spec
        self._store = store
        self._unique_names = {_index_name("ux", f): f for f in spec.unique}

    def _coll(self) -> PyMongoCollection:
        return self._store.database()[self.spec.name]

    # -- indexes --------------------------------------------------------------------------

    def ensure_indexes(self) -> None:
        """Create the spec's indexes when missing (one whose definition changed is
        replaced)."""
        for name, fields in self._unique_names.items():
            if fields == ("id",):
                continue  # _id is unique already
            keys = [(mongo_path(f), 1) for f in fields]
            partial = {mongo_path(f): {"$type": NON_NULL_TYPES} for f in fields}
            self._index(keys, name, unique=True, partialFilterExpression=partial)
        for fields in self.spec.indexes:
            keys = [(mongo_path(f), 1) for f in fields] + [("_id", 1)]
            self._index(keys, _index_name("ix", fields))
        if self.spec.text_fields:
            keys = [(f, "text") for f in self.spec.text_fields]
            # language "none": words are matched as written, "the" and "and" included; the
            # override field is one no document has (a "language" field would change it)
            self._index(keys, "text", default_language="none", language_override="_language")
        if self.spec.geo_field:
            self._index([(GEO_FIELD, "2dsphere")], "geo")

    def _index(self, keys: list[tuple[str, Any]], name: str, **options: Any) -> None:
        coll = self._coll()
        try:
            coll.create_index(keys, name=name, **options)
        except OperationFailure as exc:
            if exc.code not in _INDEX_CONFLICT_CODES:
                raise
            coll.drop_index(name)
            coll.create_index(keys, name=name, **options)

    # -- stored form ----------------------------------------------------------------------

    def _stored(self, doc: Document) -> dict[str, Any]:
        raw = {"_id": doc["id"], **{k: v for k, v in doc.items() if k != "id"}}
        if self.spec.geo_field:
            point = geo_point(doc, self.spec.geo_field)
            if point is not None:
                raw[GEO_FIELD] = geojson_point(*point)
        return raw

    @staticmethod
    def _document(raw: Mapping[str, Any]) -> Document:
        doc = {"id": raw["_id"]}
        doc.update((k, v) for k, v in raw.items() if k not in ("_id", GEO_FIELD, DISTANCE_FIELD))
        return doc

    def _update_document(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """The update operators setting ``changes`` (and ``_geo`` when the geo field moved)
        and adding 1 to the version."""
        update: dict[str, Any] = {"$inc": {"version": 1}}
        to_set = dict(changes)
        geo = self.spec.geo_field
        if geo and geo.split(".")[0] in changes:
            point = geo_point(changes, geo)
            if point is None:
                update["$unset"] = {GEO_FIELD: ""}
            else:
                to_set[GEO_FIELD] = geojson_point(*point)
        if to_set:
            update["$set"] = to_set
        return update

    def _duplicate(
        self, exc: DuplicateKeyError, doc: Mapping[str, Any], inserting: bool = False
    ) -> DuplicateKey:
        """The DuplicateKey of ``exc``, naming the fields: from the server's report, else
        (mongomock reports nothing) by looking for what ``doc`` collides with."""
        pattern = (exc.details or {}).get("keyPattern")
        if pattern:
            return DuplicateKey(tuple("id" if k == "_id" else k for k in pattern))
        match = _INDEX_NAME.search(str(exc))
        if match and match.group(1) in self._unique_names:
            return DuplicateKey(self._unique_names[match.group(1)])
        session = self._store.session()
        if inserting and self._coll().count_documents({"_id": doc["id"]}, session=session):
            return DuplicateKey(("id",))
        for fields in self.spec.unique:
            values = {mongo_path(f): value_at(doc, f) for f in fields}
            others = {"_id": {"$ne": doc.get("id")}}
            if None not in values.values() and self._coll().count_documents(
                {**values, **others}, session=session
            ):
                return DuplicateKey(fields)
        return DuplicateKey()

    # -- single documents -----------------------------------------------------------------

    def _insert(self, doc: Document, events: Events) -> Document:
        new = _json_copy(doc)
        new["version"] = 1
        outbox = self._store.outbox_documents(events)
        with (
            _translated_errors(lambda exc: self._duplicate(exc, new, inserting=True)),
            self._store._writing(together=bool(events)) as session,
        ):
            self._coll().insert_one(self._stored(new), session=session)
            self._store.write_outbox(outbox, session)
        return _json_copy(new)

    def get(self, doc_id: str) -> Document | None:
        with _translated_errors():
            raw = self._coll().find_one({"_id": doc_id}, session=self._store.session())
        return None if raw is None else self._document(raw)

    def version_of(self, doc_id: str) -> int | None:
        with _translated_errors():
            raw = self._coll().find_one(
                {"_id": doc_id}, {"version": 1, "_id": 0}, session=self._store.session()
            )
        return None if raw is None else int(raw["version"])

    def _update(
        self, doc_id: str, changes: Changes, expected_version: int | None, events: Events
    ) -> Document:
        changes = _json_copy(changes)
        outbox = self._store.outbox_documents(events)
        selector = _selector(doc_id, expected_version)
        with (
            _translated_errors(lambda exc: self._duplicate(exc, {"id": doc_id, **changes})),
            self._store._writing(together=bool(events)) as session,
        ):
            raw = self._coll().find_one_and_update(
                selector,
                self._update_document(changes),
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            if raw is None:
                self._missing_or_conflict(doc_id, expected_version, session)
            self._store.write_outbox(outbox, session)
        return self._document(raw)

    def _missing_or_conflict(
        self, doc_id: str, expected_version: int | None, session: ClientSession | None
    ) -> None:
        current = self._coll().find_one({"_id": doc_id}, {"version": 1}, session=session)
        if current is None:
            raise NotFound(doc_id)
        raise VersionConflict(f"{doc_id}: version is {current['version']}, not {expected_version}")

    def _delete(self, doc_id: str, expected_version: int | None, events: Events) -> bool:
        outbox = self._store.outbox_documents(events)
        selector = _selector(doc_id, expected_version)
        with _translated_errors(), self._store._writing(together=bool(events)) as session:
            if self._coll().delete_one(selector, session=session).deleted_count == 0:
                if expected_version is None:
                    return False
                try:
                    self._missing_or_conflict(doc_id, expected_version, session)
                except NotFound:
                    return False
            self._store.write_outbox(outbox, session)
        return True

    # -- many documents -------------------------------------------------------------------

    def _filter(self, where: Where) -> dict[str, Any]:
        return where_filter(self.spec, where)

    def _find_one(self, where: Where) -> Document | None:
        with _translated_errors():
            raw = self._coll().find_one(self._filter(where), session=self._store.session())
        return None if raw is None else self._document(raw)

    def _count(self, where: Where) -> int:
        with _translated_errors():
            return self._coll().count_documents(self._filter(where), session=self._store.session())

    def _update_many(self, where: Where, changes: Changes, events: Events) -> int:
        changes = _json_copy(changes)
        outbox = self._store.outbox_documents(events)
        selector = self._filter(where)
        with (
            _translated_errors(lambda exc: self._duplicate(exc, changes)),
            self._store._writing(together=True) as session,
        ):
            matched = (
                self._coll()
                .update_many(selector, self._update_document(changes), session=session)
                .matched_count
            )
            if matched:
                self._store.write_outbox(outbox, session)
        return matched

    def _delete_many(self, where: Where, events: Events) -> int:
        outbox = self._store.outbox_documents(events)
        selector = self._filter(where)
        with _translated_errors(), self._store._writing(together=True) as session:
            deleted = self._coll().delete_many(selector, session=session).deleted_count
            if deleted:
                self._store.write_outbox(outbox, session)
        return deleted

    def _claim(self, where: Where, changes: Changes, sort: SortSpec) -> Document | None:
        changes = _json_copy(changes)
        with _translated_errors(lambda exc: self._duplicate(exc, changes)):
            raw = self._coll().find_one_and_update(
                self._filter(where),
                self._update_document(changes),
                sort=mongo_sort(sort),
                return_document=ReturnDocument.AFTER,
                session=self._store.session(),
            )
        return None if raw is None else self._document(raw)

    # -- find -----------------------------------------------------------------------------

    def _find(self, request: FindRequest) -> Page:
        query, sort = request.query, request.sort
        selector = self._filter(query.where)
        if query.text is not None:
            selector.update(text_filter(query.text))
        keyset = after_filter(sort, request.after) if request.after is not None else {}
        session = self._store.session()
        with _translated_errors():
            if query.near is None:
                raws = list(
                    self._coll().find(
                        {**selector, **keyset},
                        sort=mongo_sort(sort),
                        limit=query.limit + 1,
                        session=session,
                    )
                )
            else:
                pipeline = near_pipeline(query.near, sort, selector, keyset, query.limit + 1)
                raws = list(self._coll().aggregate(pipeline, session=session))

        def document(raw: Mapping[str, Any]) -> Document:
            doc = self._document(raw)
            if query.near is not None:
                doc["distance_km"] = raw[DISTANCE_FIELD]
            return doc

        return request.page(raws, document, lambda raw: sort_values(raw, sort))


def _selector(doc_id: str, expected_version: int | None) -> dict[str, Any]:
    """The document ``doc_id``, when its version is ``expected_version`` (if given)."""
    selector: dict[str, Any] = {"_id": doc_id}
    if expected_version is not None:
        selector["version"] = expected_version
    return selector


def _index_name(kind: str, fields: tuple[str, ...]) -> str:
    return f"{kind}_" + "_".join(f.replace(".", "_") for f in fields)
