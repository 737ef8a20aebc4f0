"""The users service's use cases: sign-up and the account, its secondary addresses, logins,
refresh tokens and administration.

Each method takes plain values (already type-checked by the HTTP layer), applies the rules of
:mod:`services.users.domain`, writes through :class:`services.users.store.UsersStore` and
raises :mod:`eventpost.errors` errors for what cannot be done. Domain events are built as
:mod:`eventpost.contracts` models and go into the outbox in the same store operation as the
change. :class:`UsersService` puts the use cases together over one repository.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from eventpost import contracts
from eventpost.errors import Conflict, Invalid, Missing, Throttled, Unauthenticated
from eventpost.ids import new_id
from eventpost.storage import DuplicateKey, VersionConflict
from eventpost.storage.optimistic import retry_on_conflict
from eventpost.timeutil import Clock, format_time, parse_time, utcnow
from services.users import domain
from services.users.domain import ThrottlePolicy
from services.users.keys import KeyRing
from services.users.passwords import Passwords
from services.users.store import UsersStore

log = logging.getLogger(__name__)

#: How old a claim of an address by an account that does not exist must be to be released.
ORPHAN_GRACE = timedelta(minutes=1)

Document = dict[str, Any]
#: A change of an account: reads the current account, writes the service's other collections
#: and returns the account's changed fields with the events to emit.
AccountChange = Callable[[Document], tuple[Document, list[Document]]]


def username_taken() -> Conflict:
    return Conflict("The username is taken.", "username")


def email_taken() -> Conflict:
    return Conflict("The email address is already on an account.", "email")


def bad_refresh_token() -> Unauthenticated:
    return Unauthenticated("The refresh token is invalid or expired.")


def no_account() -> Missing:
    return Missing("The account does not exist.")


@dataclass(frozen=True)
class TokenPair:
    """What a login or a refresh answers: a signed access token and an opaque refresh token."""

    access_token: str
    expires_in: int
    refresh_token: str

    def as_json(self) -> dict[str, Any]:
        """The pair as the API shows it (OAuth 2 token response)."""
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        }


class UsersUseCase:
    """What every use case of the service works with: the repository, the clock, the id
    factory; and the two steps several of them take (emit an event, change an account)."""

    def __init__(
        self, store: UsersStore, *, clock: Clock = utcnow, id_factory: Callable[[], str] = new_id
    ) -> None:
        self.store = store
        self.clock = clock
        self.new_id = id_factory

    def _event(self, payload: contracts.Payload, request_id: str | None) -> Document:
        """The outbox record of a domain event."""
        return payload.envelope(request_id, clock=self.clock).to_dict()

    def _change_account(self, user_id: str, change: AccountChange) -> Document:
        """Apply ``change`` inside a transaction, deciding it again on the current account
        when it lost a race. An address another account holds meanwhile (the unique
        indexes tell) is :func:`email_taken`."""

        def attempt() -> Document:
            user = self.store.user(user_id)
            if user is None:
                raise no_account()
            with self.store.transaction():
                changes, events = change(user)
                return self.store.users.update(
                    user_id, changes, expected_version=user["version"], events=events
                )

        try:
            return retry_on_conflict(attempt, what="account")
        except DuplicateKey:
            raise email_taken() from None


class AddressClaims(UsersUseCase):
    """Which account holds which address: one claim per address, primary or secondary, so an
    address is on one account at most. Claims that hold an address for nobody are released
    when somebody else asks for the address."""

    @staticmethod
    def claim(
        email: str,
        user_id: str,
        kind: str,
        now: datetime,
        *,
        verified: bool = True,
        expires_at: str | None = None,
    ) -> Document:
        """A new claim of ``email`` by ``user_id`` (``kind``: primary or secondary)."""
        return {
            "id": email,
            "user_id": user_id,
            "kind": kind,
            "verified": verified,
            "expires_at": expires_at,
            "created_at": format_time(now),
        }

    def insert(self, claim: Document) -> None:
        """Claim an address for ``claim["user_id"]``; DuplicateKey when another account
        has it. A claim of the same account left by an earlier try is taken over."""
        try:
            self.store.claims.insert(claim)
        except DuplicateKey:
            existing = self.store.claims.get(claim["id"])
            if existing is None or existing["user_id"] != claim["user_id"]:
                raise
            self.store.claims.update(claim["id"], {k: v for k, v in claim.items() if k != "id"})

    def check_free(self, email: str, now: datetime, user_id: str | None = None) -> None:
        """:func:`email_taken` unless ``email`` is on no other account. Released first: an
        unverified secondary address whose token has expired (so nobody can squat an address
        by adding it and never verifying it), and a claim whose account does not exist (left
        by a write that did not finish on a store without transactions)."""

        def attempt() -> None:
            claim = self.store.claims.get(email)
            if claim is None or claim["user_id"] == user_id:
                return
            if not self._releasable(claim, now):
                raise email_taken()
            self._release(claim)

        retry_on_conflict(attempt, what="address")

    def _releasable(self, claim: Document, now: datetime) -> bool:
        expires_at = claim.get("expires_at")
        unverified = claim["kind"] == "secondary" and not claim["verified"]
        if unverified and expires_at and parse_time(expires_at) <= now:
            return True
        created_at = claim.get("created_at")
        # The grace keeps a sign-up that is between its two writes from being robbed.
        return (
            created_at is not None
            and parse_time(created_at) + ORPHAN_GRACE <= now
            and self.store.user(claim["user_id"]) is None
        )

    def _release(self, claim: Document) -> None:
        """Drop an address from its account; VersionConflict when either changed meanwhile."""
        owner = self.store.user(claim["user_id"])
        with self.store.transaction():
            if not self.store.claims.delete(claim["id"], expected_version=claim["version"]):
                raise VersionConflict("the claim is gone")
            if owner is not None:
                kept = [e for e in owner["secondary_emails"] if e["email"] != claim["id"]]
                self.store.users.update(
                    owner["id"], {"secondary_emails": kept}, expected_version=owner["version"]
                )
        log.info("released an unclaimed address", extra={"user_id": claim["user_id"]})


class Registration(UsersUseCase):
    """Accounts come and go: sign-up, the account itself, its primary address, deletion."""

    def __init__(
        self, store: UsersStore, claims: AddressClaims, passwords: Passwords, **common: Any
    ) -> None:
        super().__init__(store, **common)
        self.claims = claims
        self.passwords = passwords

    def sign_up(
        self,
        username: str,
        email: str,
        password: str,
        *,
        role: str = "user",
        request_id: str | None = None,
    ) -> Document:
        """Create an account; emits ``user.created``. Raises Invalid / Conflict."""
        email = domain.checked_sign_up(username, email, password)
        if role not in domain.ROLES:
            raise ValueError(f"unknown role {role!r}")
        now = self.clock()
        # Cheap checks first, so a taken name costs no argon2 work; the unique indexes below
        # decide races.
        if self.store.user_by_username(username) is not None:
            raise username_taken()
        self.claims.check_free(email, now)
        user = {
            "id": self.new_id(),
            "username": username,
            "email": email,
            "secondary_emails": [],
            "role": role,
            "password_hash": self.passwords.hash(password),
            "created_at": format_time(now),
        }
        created = contracts.UserCreated(user_id=user["id"], username=username, email=email)
        try:
            with self.store.transaction():
                self.store.claims.insert(self.claims.claim(email, user["id"], "primary", now))
                stored = self.store.users.insert(user, events=[self._event(created, request_id)])
        except DuplicateKey as exc:
            # Rolled back with the transaction; removed again in case the store could not
            # make the two writes one unit (a claim must never outlive a failed sign-up).
            self.store.claims.delete_many({"user_id": user["id"]})
            taken = username_taken() if "username" in exc.fields else email_taken()
            raise taken from None
        log.info("account created", extra={"user_id": user["id"]})
        return stored

    def account(self, user_id: str) -> Document | None:
        """The account ``user_id``, or None."""
        return self.store.user(user_id)

    def change_primary(self, user_id: str, email: str) -> Document:
        """Make ``email`` the primary address. Any address that is on no other account is
        accepted (as at sign-up); one of the user's secondary addresses is promoted. The old
        primary address is released."""
        email = domain.checked_email(email)
        now = self.clock()
        user = self.store.user(user_id)
        if user is None:
            raise no_account()
        if email == user["email"]:
            return user
        if not any(e["email"] == email for e in user["secondary_emails"]):
            self.claims.check_free(email, now, user_id)

        def change(current: Document) -> tuple[Document, list[Document]]:
            claims = self.store.claims
            if any(e["email"] == email for e in current["secondary_emails"]):
                claims.update(email, {"kind": "primary", "verified": True, "expires_at": None})
            else:
                self.claims.insert(self.claims.claim(email, user_id, "primary", now))
            claims.delete(current["email"])
            kept = [e for e in current["secondary_emails"] if e["email"] != email]
            return {"email": email, "secondary_emails": kept}, []

        return self._change_account(user_id, change)

    def delete(self, user_id: str, *, request_id: str | None = None) -> bool:
        """Delete the account with its addresses and refresh tokens at once; emits
        ``user.deleted``. False when there was no such account."""
        event = self._event(contracts.UserDeleted(user_id=user_id), request_id)
        failures = domain.account_throttle_key(user_id, "")
        gone = self.store.delete_account(user_id, failures, [event])
        if gone:
            log.info("account deleted", extra={"user_id": user_id})
        return gone


class SecondaryAddresses(UsersUseCase):
    """An account's secondary addresses: added unverified, verified with the token that was
    emailed, removed."""

    def __init__(self, store: UsersStore, claims: AddressClaims, **common: Any) -> None:
        super().__init__(store, **common)
        self.claims = claims

    def add(self, user_id: str, email: str, *, request_id: str | None = None) -> Document:
        """Add a secondary address (unverified) and emit ``user.email_added`` with a
        single-use verification token valid 24 hours."""
        email = domain.checked_email(email)
        now = self.clock()
        user = self.store.user(user_id)
        if user is None:
            raise no_account()
        if email == user["email"] or any(e["email"] == email for e in user["secondary_emails"]):
            raise Conflict("The email address is already on your account.", "email")
        self.claims.check_free(email, now, user_id)
        token = domain.new_secret()
        expires_at = domain.verification_expiry(now)

        def change(current: Document) -> tuple[Document, list[Document]]:
            if len(current["secondary_emails"]) >= domain.MAX_SECONDARY_EMAILS:
                raise Invalid(f"at most {domain.MAX_SECONDARY_EMAILS} secondary addresses", "email")
            self.claims.insert(
                self.claims.claim(
                    email, user_id, "secondary", now, verified=False, expires_at=expires_at
                )
            )
            entry = {
                "email": email,
                "verified": False,
                "token_digest": domain.token_digest(token),
                "token_expires_at": expires_at,
            }
            added = contracts.UserEmailAdded(
                user_id=user_id,
                username=current["username"],
                email=email,
                token=token,
                expires_at=expires_at,
            )
            event = self._event(added, request_id)
            return {"secondary_emails": [*current["secondary_emails"], entry]}, [event]

        return self._change_account(user_id, change)

    def verify(self, user_id: str, email: str, token: str) -> Document:
        """Mark a secondary address verified with its token (once, within 24 hours)."""
        email = domain.checked_email(email)
        now = self.clock()
        wrong = Invalid("The verification token is wrong, used or expired.", "token")

        def change(current: Document) -> tuple[Document, list[Document]]:
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

        return self._change_account(user_id, change)

    def remove(self, user_id: str, email: str) -> Document:
        """Remove a secondary address (404 when it is not one of the user's)."""
        try:
            email = domain.normalize_email(email)
        except domain.InvalidEmail:
            raise Missing("No such secondary address.") from None

        def change(current: Document) -> tuple[Document, list[Document]]:
            kept = [e for e in current["secondary_emails"] if e["email"] != email]
            if len(kept) == len(current["secondary_emails"]):
                if email == current["email"]:
                    raise Conflict(
                        "The primary address cannot be removed; change it first.", "email"
                    )
                raise Missing("No such secondary address.")
            self.store.claims.delete(email)
            return {"secondary_emails": kept}, []

        return self._change_account(user_id, change)


class RefreshTokens(UsersUseCase):
    """Token pairs and refresh-token families: every login starts a family, every refresh
    spends its token for a new one of the same family, and a spent token used again revokes
    the whole family."""

    def __init__(
        self,
        store: UsersStore,
        keys: KeyRing,
        *,
        access_token_ttl: int = 900,
        refresh_token_ttl: int = 30 * 24 * 3600,
        **common: Any,
    ) -> None:
        super().__init__(store, **common)
        self.keys = keys
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl

    def issue(self, user: Document, *, family_id: str, now: datetime) -> TokenPair:
        """A new token pair for ``user``, its refresh token the first of ``family_id``."""
        refresh = domain.new_secret()
        self.store.refresh_tokens.insert(self._refresh_doc(refresh, user["id"], family_id, now))
        return self._pair(user, refresh, now)

    def _pair(self, user: Document, refresh: str, now: datetime) -> TokenPair:
        access = self.keys.access_token(user["id"], user["role"], now, self.access_token_ttl)
        return TokenPair(access, self.access_token_ttl, refresh)

    def _refresh_doc(self, token: str, user_id: str, family_id: str, now: datetime) -> Document:
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
            raise bad_refresh_token()
        if doc["status"] != "active":
            self._revoke_family(doc)
            raise bad_refresh_token()
        if parse_time(doc["expires_at"]) <= now:
            raise bad_refresh_token()
        user = self.store.user(doc["user_id"])
        if user is None:
            raise bad_refresh_token()
        new_token = domain.new_secret()
        successor = self._refresh_doc(new_token, user["id"], doc["family_id"], now)
        if self.store.spend_refresh_token(digest, format_time(now), successor) is None:
            # Used by a concurrent request a moment ago: treat as reuse.
            self._revoke_family(doc)
            raise bad_refresh_token()
        return self._pair(user, new_token, now)

    def _revoke_family(self, doc: Document) -> None:
        n = self.store.revoke_family(doc["family_id"])
        log.warning(
            "refresh token reused: family revoked",
            extra={"user_id": doc["user_id"], "family_id": doc["family_id"], "revoked": n},
        )


class Logins(UsersUseCase):
    """Login with a password, throttled per account and per client address in the store (so
    every process agrees)."""

    def __init__(
        self,
        store: UsersStore,
        tokens: RefreshTokens,
        passwords: Passwords,
        throttle: ThrottlePolicy,
        **common: Any,
    ) -> None:
        super().__init__(store, **common)
        self.tokens = tokens
        self.passwords = passwords
        self.throttle = throttle

    def login(self, identifier: str, password: str, client: str) -> TokenPair:
        """A new token pair for the account named ``identifier`` (username or primary email).

        Unknown accounts and wrong passwords give the same 401 after the same argon2 work;
        failures are counted per account and per client address."""
        now = self.clock()
        user = self._find(identifier)
        account_key = domain.account_throttle_key(user and user["id"], identifier.strip())
        keys = [
            (account_key, self.throttle.per_account),
            (domain.address_throttle_key(client), self.throttle.per_address),
        ]
        attempt = self._count_attempt(keys, now)
        stored_hash = user["password_hash"] if user else None
        if not self.passwords.verify(stored_hash, password) or user is None:
            log.info("login failed", extra={"client": client})
            raise Unauthenticated("The username or password is wrong.")
        self.store.forget_failures(account_key, attempt)
        if self.passwords.needs_rehash(user["password_hash"]):
            self._rehash(user, password)
        log.info("login", extra={"user_id": user["id"]})
        return self.tokens.issue(user, family_id=self.new_id(), now=now)

    def _find(self, identifier: str) -> Document | None:
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
            raise Throttled("Too many failed logins; try again later.", retry)

    def _count_attempt(self, keys: list[tuple[str, int]], now: datetime) -> list[str]:
        """Check the limits and count this attempt as a failure, in one transaction, so
        parallel guesses cannot all pass the check before any of them is counted; a
        successful login takes its own records back. Returns the records' ids."""
        with self.store.transaction():
            self._check_throttle(keys, now)
            ids = [self.new_id() for _ in keys]
            self.store.add_failures(
                [key for key, _limit in keys],
                ids,
                at=format_time(now),
                prune_before=format_time(now - self.throttle.window),
            )
        return ids

    def _rehash(self, user: Document, password: str) -> None:
        try:
            self.store.users.update(
                user["id"],
                {"password_hash": self.passwords.hash(password)},
                expected_version=user["version"],
            )
            log.info("password rehashed with current parameters", extra={"user_id": user["id"]})
        except VersionConflict:
            pass  # changed meanwhile; the next login rehashes


class Administration(UsersUseCase):
    """What operators do from the command line (``invoke create-admin``)."""

    def __init__(
        self, store: UsersStore, registration: Registration, passwords: Passwords, **common: Any
    ) -> None:
        super().__init__(store, **common)
        self.registration = registration
        self.passwords = passwords

    def make_admin(
        self, username: str, email: str | None, password: str | None
    ) -> tuple[Document, bool]:
        """Create an admin account, or promote the existing account ``username`` (and set
        its password when one is given; ``email`` is only used for a new account).
        Returns (user, created)."""
        hashed: list[str] = []  # the new password's hash, made once however many tries

        def attempt() -> tuple[Document, bool]:
            existing = self.store.user_by_username(username)
            if existing is None:
                if not email or not password:
                    raise Invalid("A new account needs --email and --password.", "email")
                return self.registration.sign_up(username, email, password, role="admin"), True
            changes: Document = {"role": "admin"}
            if password is not None:
                if not hashed:
                    hashed.append(self.passwords.hash(domain.checked_password(password)))
                changes["password_hash"] = hashed[0]
            promoted = self.store.users.update(
                existing["id"], changes, expected_version=existing["version"]
            )
            return promoted, False

        return retry_on_conflict(attempt, what="account")


class UsersService:
    """Every use case of the users service over one repository: what the resources and the
    admin command are given."""

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
        passwords = passwords or Passwords()
        common: dict[str, Any] = {"clock": clock, "id_factory": id_factory}
        claims = AddressClaims(store, **common)
        self.registration = Registration(store, claims, passwords, **common)
        self.addresses = SecondaryAddresses(store, claims, **common)
        self.tokens = RefreshTokens(
            store,
            keys,
            access_token_ttl=access_token_ttl,
            refresh_token_ttl=refresh_token_ttl,
            **common,
        )
        self.logins = Logins(store, self.tokens, passwords, throttle or ThrottlePolicy(), **common)
        self.admin = Administration(store, self.registration, passwords, **common)
