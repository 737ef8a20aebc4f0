"""The users service's collections over the storage port.

- ``users``: one document per account (``username`` and ``email`` unique; ``email`` is the
  primary address, lowercase). Secondary addresses live in the document with the digest and
  expiry of their verification token.
- ``email_claims``: one document per address on any account, primary or secondary, whose id
  is the lowercase address itself, so the store's unique id makes an address belong to one
  account at most; written in the same transaction as the account.
- ``refresh_tokens``: id = SHA-256 of the token; ``family_id`` ties the rotations of one login.
- ``login_failures``: one document per failed login per throttle key, with its time.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from eventpost.storage import (
    AnyOf,
    Collection,
    CollectionSpec,
    LazyCollection,
    OutboxEvent,
    Query,
    Range,
    Store,
)

USERS = CollectionSpec("users", unique=(("username",), ("email",)))
EMAIL_CLAIMS = CollectionSpec("email_claims", indexes=(("user_id",),))
REFRESH_TOKENS = CollectionSpec(
    "refresh_tokens", indexes=(("family_id",), ("user_id",), ("expires_at",))
)
LOGIN_FAILURES = CollectionSpec("login_failures", indexes=(("key", "at"), ("at",)))


class UsersStore:
    """The users service's repository: its four collections (indexes created on first use)
    and the queries and multi-collection writes its use cases make. Use cases reach the
    collections only through this class."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.users: Collection = LazyCollection(store, USERS)
        self.claims: Collection = LazyCollection(store, EMAIL_CLAIMS)
        self.refresh_tokens: Collection = LazyCollection(store, REFRESH_TOKENS)
        self.failures: Collection = LazyCollection(store, LOGIN_FAILURES)

    def transaction(self) -> AbstractContextManager[None]:
        """One atomic unit over several collections."""
        return self._store.transaction()

    # -- accounts ----------------------------------------------------------------------------

    def user(self, user_id: str) -> dict[str, Any] | None:
        """The account ``user_id``, or None."""
        return self.users.get(user_id)

    def user_by_username(self, username: str) -> dict[str, Any] | None:
        """The account named ``username``, or None."""
        return self.users.find_one({"username": username})

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        """The account whose primary address is ``email`` (lowercase)."""
        return self.users.find_one({"email": email})

    # -- failed logins -------------------------------------------------------------------------

    def recent_failures(self, key: str, since: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` failures of ``key`` at or after ``since``, oldest first."""
        query = Query(where={"key": key, "at": Range(gte=since)}, sort=(("at", 1),), limit=limit)
        return self.failures.find(query).items

    def add_failures(
        self, keys: Sequence[str], ids: Sequence[str], at: str, prune_before: str
    ) -> None:
        """Count one failed login at ``at`` under each of ``keys`` (records with ``ids``) and
        drop the records older than ``prune_before``."""
        for key, record_id in zip(keys, ids, strict=True):
            self.failures.insert({"id": record_id, "key": key, "at": at})
        self.failures.delete_many({"at": Range(lt=prune_before)})

    def forget_failures(self, key: str, ids: Sequence[str]) -> None:
        """Drop every failure of ``key`` and the records ``ids``, in one transaction."""
        with self.transaction():
            self.failures.delete_many({"key": key})
            for record_id in ids:
                self.failures.delete(record_id)

    def delete_account(
        self, user_id: str, failures_key: str, events: Sequence[OutboxEvent]
    ) -> bool:
        """Delete the account with its address claims, refresh tokens and failed logins (under
        ``failures_key``) at once, with ``events``; False when there was no such account."""
        with self.transaction():
            gone = self.users.delete(user_id, events=events)
            if gone:
                self.claims.delete_many({"user_id": user_id})
                self.refresh_tokens.delete_many({"user_id": user_id})
                self.failures.delete_many({"key": failures_key})
        return gone

    # -- refresh tokens ----------------------------------------------------------------------

    def spend_refresh_token(
        self, digest: str, used_at: str, successor: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Mark the active token ``digest`` used and store its ``successor``, in one
        transaction; None (and nothing stored) when it was not active any more."""
        with self.transaction():
            spent = self.refresh_tokens.claim(
                {"id": digest, "status": "active"}, {"status": "used", "used_at": used_at}
            )
            if spent is not None:
                self.refresh_tokens.insert(successor)
        return spent

    def revoke_family(self, family_id: str) -> int:
        """Revoke every token of a login (family) not revoked yet; how many were."""
        return self.refresh_tokens.update_many(
            {"family_id": family_id, "status": AnyOf(["active", "used"])}, {"status": "revoked"}
        )
