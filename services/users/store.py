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

from typing import Any

from eventpost.storage import Collection, CollectionSpec, LazyCollection, Query, Range, Store

USERS = CollectionSpec("users", unique=(("username",), ("email",)))
EMAIL_CLAIMS = CollectionSpec("email_claims", indexes=(("user_id",),))
REFRESH_TOKENS = CollectionSpec(
    "refresh_tokens", indexes=(("family_id",), ("user_id",), ("expires_at",))
)
LOGIN_FAILURES = CollectionSpec("login_failures", indexes=(("key", "at"), ("at",)))


class UsersStore:
    """The users service's collections (indexes created on first use)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.users: Collection = LazyCollection(store, USERS)
        self.claims: Collection = LazyCollection(store, EMAIL_CLAIMS)
        self.refresh_tokens: Collection = LazyCollection(store, REFRESH_TOKENS)
        self.failures: Collection = LazyCollection(store, LOGIN_FAILURES)

    def transaction(self):
        """One atomic unit over several collections."""
        return self.store.transaction()

    def user_by_username(self, username: str) -> dict[str, Any] | None:
        return self.users.find_one({"username": username})

    def user_by_email(self, email: str) -> dict[str, Any] | None:
        """The account whose primary address is ``email`` (lowercase)."""
        return self.users.find_one({"email": email})

    def recent_failures(self, key: str, since: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` failures of ``key`` at or after ``since``, oldest first."""
        query = Query(where={"key": key, "at": Range(gte=since)}, sort=(("at", 1),), limit=limit)
        return self.failures.find(query).items
