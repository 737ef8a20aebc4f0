"""The users service's use cases: sign-up, login, refresh, email addresses, deletion.

Each method takes plain values (already type-checked by the HTTP layer), applies the rules of
:mod:`services.users.domain`, writes through :class:`services.users.store.UsersStore` and
raises :class:`services.users.domain.AccountError` subclasses for what cannot be done.
Domain events go into the outbox in the same store operation as the change.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from eventpost import contracts
from eventpost.messaging import Envelope
from eventpost.storage import AnyOf, DuplicateKey, Range, VersionConflict
from eventpost.timeutil import Clock, format_time, parse_time, utcnow
from services.users import domain
from services.users.domain import (
    BadCredentials,
    Invalid,
    Missing,
    Passwords,
    Taken,
    Throttled,
    ThrottlePolicy,
)
from services.users.keys import KeyRing
from services.users.store import UsersStore

log = logging.getLogger(__name__)

#: How many times a change that lost an optimistic-version race is tried again.
RETRIES = 5
#: How old a claim of an address by an account that does not exist must be to be released.
ORPHAN_GRACE = timedelta(minutes=1)


def new_id() -> str:
    """A fresh opaque id."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str

    def as_json(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }


def _email(value: str, field: str = "email") -> str:
    try:
        return domain.normalize_email(value)
    except domain.InvalidEmail as exc:
        raise Invalid(f"not a valid email address: {exc}", field) from None


class Accounts:
    """Every account operation of the users service."""

    def __init__(
        self,
        store: UsersStore,
        keys: KeyRing,
        *,
        passwords: Passwords | None = None,
        clock: Clock = utcnow,
        id_factory: Callable[[], str] = new_id,
        access_token_ttl: int = 900,
        refresh_token_ttl: int = 30 * 24 * 3600,
        throttle: ThrottlePolicy | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.passwords = passwords or Passwords()
        self.clock = clock
        self.new_id = id_factory
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.throttle = throttle or ThrottlePolicy()

    def _event(self, type_: str, payload: dict[str, Any], request_id: str | None) -> dict:
        return Envelope.new(type_, payload, request_id=request_id, clock=self.clock).to_dict()

    # -- sign-up --------------------------------------------------------------------------

    def sign_up(
        self,
        username: str,
        email: str,
        password: str,
        *,
        role: str = "user",
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Create an account; emits ``user.created``. Raises Invalid / Taken."""
        errors = []
        if (problem := domain.username_problem(username)) is not None:
            errors.append(Invalid(problem, "username"))
        if (problem := domain.password_problem(password)) is not None:
            errors.append(Invalid(problem, "password"))
        try:
            email = _email(email)
        except Invalid as exc:
            errors.append(exc)
        if errors:
            raise errors[0] if len(errors) == 1 else domain.InvalidMany(errors)
        if role not in domain.ROLES:
            raise ValueError(f"unknown role {role!r}")
        now = self.clock()
        # Cheap checks first, so a taken name costs no argon2 work; the unique indexes below
        # decide races.
        if self.store.user_by_username(username) is not None:
            raise Taken("The username is taken.", "username")
        self._check_email_free(email, now)
        user = {
            "id": self.new_id(),
            "username": username,
            "email": email,
            "secondary_emails": [],
            "role": role,
            "password_hash": self.passwords.hash(password),
            "created_at": format_time(now),
        }
        event = self._event(
            contracts.USER_CREATED,
            {"user_id": user["id"], "username": username, "email": email},
            request_id,
        )
        try:
            with self.store.transaction():
                self.store.claims.insert(self._claim(email, user["id"], "primary", now))
                created = self.store.users.insert(user, events=[event])
        except DuplicateKey as exc:
            # Rolled back with the transaction; removed again in case the store could not
            # make the two writes one unit (a claim must never outlive a failed sign-up).
            self.store.claims.delete_many({"user_id": user["id"]})
            if "username" in exc.fields:
                raise Taken("The username is taken.", "username") from None
            raise Taken("The email address is already on an account.", "email") from None
        log.info("account created", extra={"user_id": user["id"]})
        return created

    @staticmethod
    def _claim(
        email: str,
        user_id: str,
        kind: str,
        now: datetime,
        *,
        verified: bool = True,
        expires_at: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": email,
            "user_id": user_id,
            "kind": kind,
            "verified": verified,
            "expires_at": expires_at,
            "created_at": format_time(now),
        }

    def _insert_claim(self, claim: dict[str, Any]) -> None:
        """Claim an address for ``claim["user_id"]``; DuplicateKey when another account
        has it. A claim of the same account left by an earlier try is taken over."""
        try:
            self.store.claims.insert(claim)
        except DuplicateKey:
            existing = self.store.claims.get(claim["id"])
            if existing is None or existing["user_id"] != claim["user_id"]:
                raise
            self.store.claims.update(claim["id"], {k: v for k, v in claim.items() if k != "id"})

    def _check_email_free(self, email: str, now: datetime, user_id: str | None = None) -> None:
        """Taken unless ``email`` is on no other account. Released first: an unverified
        secondary address whose token has expired (so nobody can squat an address by adding
        it and never verifying it), and a claim whose account does not exist (left by a
        write that did not finish on a store without transactions)."""
        claim = self.store.claims.get(email)
        if claim is None or claim["user_id"] == user_id:
            return
        if self._releasable(claim, now) and self._release_claim(claim):
            return
        raise Taken("The email address is already on an account.", "email")

    def _releasable(self, claim: dict[str, Any], now: datetime) -> bool:
        expires_at = claim.get("expires_at")
        unverified = claim["kind"] == "secondary" and not claim["verified"]
        if unverified and expires_at and parse_time(expires_at) <= now:
            return True
        created_at = claim.get("created_at")
        # The grace keeps a sign-up that is between its two writes from being robbed.
        return (
            created_at is not None
            and parse_time(created_at) + ORPHAN_GRACE <= now
            and self.store.users.get(claim["user_id"]) is None
        )

    def _release_claim(self, claim: dict[str, Any]) -> bool:
        """Drop an address from its account; False if it changed meanwhile."""
        owner = self.store.users.get(claim["user_id"])
        try:
            with self.store.transaction():
                if not self.store.claims.delete(claim["id"], expected_version=claim["version"]):
                    return False
                if owner is not None:
                    kept = [e for e in owner["secondary_emails"] if e["email"] != claim["id"]]
                    self.store.users.update(
                        owner["id"],
                        {"secondary_emails": kept},
                        expected_version=owner["version"],
                    )
        except VersionConflict:
            return False
        log.info("released an unclaimed address", extra={"user_id": claim["user_id"]})
        return True

    # -- login, tokens --------------------------------------------------------------------

    def _find_login(self, identifier: str) -> dict[str, Any] | None:
        name = identifier.strip().lower()
        if "@" in name:
            try:
                return self.store.user_by_email(domain.normalize_email(name))
            except domain.InvalidEmail:
                return None
        return self.store.user_by_username(name)

    def _check_throttle(self, keys: list[tuple[str, int]], now: datetime) -> None:
        since = format_time(now - self.throttle.window)
        retry = 0
        for key, limit in keys:
            recent = self.store.recent_failures(key, since, limit)
            if len(recent) >= limit:
                oldest = parse_time(recent[0]["at"])
                retry = max(retry, self.throttle.retry_after(now, oldest))
        if retry:
            raise Throttled(retry)

    def _count_attempt(self, keys: list[tuple[str, int]], now: datetime) -> list[str]:
        """Check the limits and count this attempt as a failure, in one transaction, so
        parallel guesses cannot all pass the check before any of them is counted; a
        successful login takes its own records back. Returns the records' ids."""
        at = format_time(now)
        ids = []
        with self.store.transaction():
            self._check_throttle(keys, now)
            for key, _limit in keys:
                ids.append(self.new_id())
                self.store.failures.insert({"id": ids[-1], "key": key, "at": at})
            self.store.failures.delete_many(
                {"at": Range(lt=format_time(now - self.throttle.window))}
            )
        return ids

    def login(self, identifier: str, password: str, client: str) -> TokenPair:
        """A new token pair for the account named ``identifier`` (username or primary email).

        Unknown accounts and wrong passwords give the same :class:`BadCredentials` after the
        same argon2 work; failures are counted per account and per client address."""
        now = self.clock()
        user = self._find_login(identifier)
        account_key = domain.account_throttle_key(user and user["id"], identifier.strip())
        keys = [
            (account_key, self.throttle.per_account),
            (domain.address_throttle_key(client), self.throttle.per_address),
        ]
        attempt = self._count_attempt(keys, now)
        stored_hash = user["password_hash"] if user else None
        if not self.passwords.verify(stored_hash, password) or user is None:
            log.info("login failed", extra={"client": client})
            raise BadCredentials("The username or password is wrong.")
        with self.store.transaction():
            self.store.failures.delete_many({"key": account_key})
            for record_id in attempt:
                self.store.failures.delete(record_id)
        if self.passwords.needs_rehash(user["password_hash"]):
            self._rehash(user, password)
        log.info("login", extra={"user_id": user["id"]})
        return self._issue(user, family_id=self.new_id(), now=now)

    def _rehash(self, user: dict[str, Any], password: str) -> None:
        try:
            self.store.users.update(
                user["id"],
                {"password_hash": self.passwords.hash(password)},
                expected_version=user["version"],
            )
            log.info("password rehashed with current parameters", extra={"user_id": user["id"]})
        except VersionConflict:
            pass  # changed meanwhile; the next login rehashes

    def _issue(self, user: dict[str, Any], *, family_id: str, now: datetime) -> TokenPair:
        refresh = domain.new_secret()
        self.store.refresh_tokens.insert(self._refresh_doc(refresh, user["id"], family_id, now))
        return self._pair(user, refresh, now)

    def _pair(self, user: dict[str, Any], refresh: str, now: datetime) -> TokenPair:
        access = self.keys.access_token(user["id"], user["role"], now, self.access_token_ttl)
        return TokenPair(access, self.access_token_ttl, refresh)

    def _refresh_doc(
        self, token: str, user_id: str, family_id: str, now: datetime
    ) -> dict[str, Any]:
        return {
            "id": domain.token_digest(token),
            "family_id": family_id,
            "user_id": user_id,
            "status": "active",
            "created_at": format_time(now),
            "expires_at": format_time(now + timedelta(seconds=self.refresh_token_ttl)),
        }

    def refresh(self, token: str) -> TokenPair:
        """Rotate a refresh token: the old one is spent, a new pair is issued in the same
        family. A spent or revoked token revokes its whole family."""
        now = self.clock()
        digest = domain.token_digest(token)
        doc = self.store.refresh_tokens.get(digest)
        if doc is None:
            raise BadCredentials("The refresh token is invalid or expired.")
        if doc["status"] != "active":
            self._revoke_family(doc)
            raise BadCredentials("The refresh token is invalid or expired.")
        if parse_time(doc["expires_at"]) <= now:
            raise BadCredentials("The refresh token is invalid or expired.")
        user = self.store.users.get(doc["user_id"])
        if user is None:
            raise BadCredentials("The refresh token is invalid or expired.")
        new_token = domain.new_secret()
        with self.store.transaction():
            spent = self.store.refresh_tokens.claim(
                {"id": digest, "status": "active"},
                {"status": "used", "used_at": format_time(now)},
            )
            if spent is not None:
                self.store.refresh_tokens.insert(
                    self._refresh_doc(new_token, user["id"], doc["family_id"], now)
                )
        if spent is None:  # used by a concurrent request a moment ago: treat as reuse
            self._revoke_family(doc)
            raise BadCredentials("The refresh token is invalid or expired.")
        return self._pair(user, new_token, now)

    def _revoke_family(self, doc: dict[str, Any]) -> None:
        n = self.store.refresh_tokens.update_many(
            {"family_id": doc["family_id"], "status": AnyOf(["active", "used"])},
            {"status": "revoked"},
        )
        log.warning(
            "refresh token reused: family revoked",
            extra={"user_id": doc["user_id"], "family_id": doc["family_id"], "revoked": n},
        )

    # -- the signed-in user -------------------------------------------------------------

    def get(self, user_id: str) -> dict[str, Any] | None:
        return self.store.users.get(user_id)

    def _change_user(
        self, user_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply ``change`` (which reads the current user, writes its other collections
        and returns the user's changed fields) inside a transaction, retrying lost races."""
        for _ in range(RETRIES):
            user = self.store.users.get(user_id)
            if user is None:
                raise Missing("The account does not exist.")
            try:
                with self.store.transaction():
                    changes, events = change(user)
                    return self.store.users.update(
                        user_id, changes, expected_version=user["version"], events=events
                    )
            except VersionConflict:
                continue
        raise Taken("The account changed meanwhile; try again.")

    def change_primary(self, user_id: str, email: str) -> dict[str, Any]:
        """Make ``email`` the primary address. Any address that is on no other account is
        accepted (as at sign-up); one of the user's secondary addresses is promoted. The old
        primary address is released."""
        email = _email(email)
        now = self.clock()
        user = self.get(user_id)
        if user is None:
            raise Missing("The account does not exist.")
        if email == user["email"]:
            return user
        own = any(e["email"] == email for e in user["secondary_emails"])
        if not own:
            self._check_email_free(email, now, user_id)

        def change(current: dict[str, Any]) -> tuple[dict[str, Any], list]:
            claims = self.store.claims
            if any(e["email"] == email for e in current["secondary_emails"]):
                claims.update(email, {"kind": "primary", "verified": True, "expires_at": None})
            else:
                self._insert_claim(self._claim(email, user_id, "primary", now))
            claims.delete(current["email"])
            kept = [e for e in current["secondary_emails"] if e["email"] != email]
            return {"email": email, "secondary_emails": kept}, []

        try:
            return self._change_user(user_id, change)
        except DuplicateKey:
            raise Taken("The email address is already on an account.", "email") from None

    def add_email(
        self, user_id: str, email: str, *, request_id: str | None = None
    ) -> dict[str, Any]:
        """Add a secondary address (unverified) and emit ``user.email_added`` with a
        single-use verification token valid 24 hours."""
        email = _email(email)
        now = self.clock()
        user = self.get(user_id)
        if user is None:
            raise Missing("The account does not exist.")
        if email == user["email"] or any(e["email"] == email for e in user["secondary_emails"]):
            raise Taken("The email address is already on your account.", "email")
        self._check_email_free(email, now, user_id)
        token = domain.new_secret()
        expires_at = domain.verification_expiry(now)

        def change(current: dict[str, Any]) -> tuple[dict[str, Any], list]:
            if len(current["secondary_emails"]) >= domain.MAX_SECONDARY_EMAILS:
                raise Invalid(f"at most {domain.MAX_SECONDARY_EMAILS} secondary addresses", "email")
            self._insert_claim(
                self._claim(email, user_id, "secondary", now, verified=False, expires_at=expires_at)
            )
            entry = {
                "email": email,
                "verified": False,
                "token_digest": domain.token_digest(token),
                "token_expires_at": expires_at,
            }
            payload: contracts.UserEmailAdded = {
                "user_id": user_id,
                "username": current["username"],
                "email": email,
                "token": token,
                "expires_at": expires_at,
            }
            event = self._event(contracts.USER_EMAIL_ADDED, dict(payload), request_id)
            return {"secondary_emails": [*current["secondary_emails"], entry]}, [event]

        try:
            return self._change_user(user_id, change)
        except DuplicateKey:
            raise Taken("The email address is already on an account.", "email") from None

    def verify_email(self, user_id: str, email: str, token: str) -> dict[str, Any]:
        """Mark a secondary address verified with its token (once, within 24 hours)."""
        email = _email(email)
        now = self.clock()
        wrong = Invalid("The verification token is wrong, used or expired.", "token")

        def change(current: dict[str, Any]) -> tuple[dict[str, Any], list]:
            entries = current["secondary_emails"]
            entry = next((e for e in entries if e["email"] == email), None)
            if entry is None:
                raise Invalid("The address is not a secondary address of yours.", "email")
            if entry["verified"] or not domain.digest_matches(token, entry.get("token_digest")):
                raise wrong
            if parse_time(entry["token_expires_at"]) <= now:
                raise wrong
            done = {"email": email, "verified": True}
            self.store.claims.update(email, {"verified": True, "expires_at": None})
            return {"secondary_emails": [done if e is entry else e for e in entries]}, []

        return self._change_user(user_id, change)

    def remove_email(self, user_id: str, email: str) -> dict[str, Any]:
        """Remove a secondary address (404 when it is not one of the user's)."""
        try:
            email = domain.normalize_email(email)
        except domain.InvalidEmail:
            raise Missing("No such secondary address.") from None

        def change(current: dict[str, Any]) -> tuple[dict[str, Any], list]:
            kept = [e for e in current["secondary_emails"] if e["email"] != email]
            if len(kept) == len(current["secondary_emails"]):
                if email == current["email"]:
                    raise Taken("The primary address cannot be removed; change it first.", "email")
                raise Missing("No such secondary address.")
            self.store.claims.delete(email)
            return {"secondary_emails": kept}, []

        return self._change_user(user_id, change)

    def delete(self, user_id: str, *, request_id: str | None = None) -> bool:
        """Delete the account with its addresses and refresh tokens at once; emits
        ``user.deleted``. False when there was no such account."""
        event = self._event(contracts.USER_DELETED, {"user_id": user_id}, request_id)
        with self.store.transaction():
            gone = self.store.users.delete(user_id, events=[event])
            if gone:
                self.store.claims.delete_many({"user_id": user_id})
                self.store.refresh_tokens.delete_many({"user_id": user_id})
                self.store.failures.delete_many({"key": domain.account_throttle_key(user_id, "")})
        if gone:
            log.info("account deleted", extra={"user_id": user_id})
        return gone

    # -- administration -----------------------------------------------------------------

    def make_admin(
        self, username: str, email: str | None, password: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Create an admin account, or promote the existing account ``username`` (and set
        its password when one is given; ``email`` is only used for a new account).
        Returns (user, created)."""
        existing = self.store.user_by_username(username)
        if existing is None:
            if not email or not password:
                raise Invalid("A new account needs --email and --password.", "email")
            return self.sign_up(username, email, password, role="admin"), True
        changes: dict[str, Any] = {"role": "admin"}
        if password is not None:
            if (problem := domain.password_problem(password)) is not None:
                raise Invalid(problem, "password")
            changes["password_hash"] = self.passwords.hash(password)
        return self.store.users.update(existing["id"], changes), False
