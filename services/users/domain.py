"""Rules of accounts and identity, with no I/O: what a valid username or email is, how a user
is shown, how passwords, refresh tokens and verification tokens are made and checked, and how
many failed logins are allowed."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email

from eventpost.timeutil import format_time

USERNAME_RE = re.compile(r"^[a-z0-9_.-]{3,32}$")
PASSWORD_MIN = 8
#: Upper bound on a password's length: argon2 cost does not grow with it, but nothing longer
#: is a password a person types.
PASSWORD_MAX = 1024
EMAIL_MAX = 254
MAX_SECONDARY_EMAILS = 5
VERIFICATION_TTL = timedelta(hours=24)
ROLES = ("user", "admin")


class InvalidEmail(ValueError):
    """The text is not an email address we accept."""


def normalize_email(value: str) -> str:
    """The canonical (lowercase) form of an email address, or :class:`InvalidEmail`.

    Addresses are compared case-insensitively everywhere, so the stored form is lowercase.
    DNS is never consulted."""
    if len(value) > EMAIL_MAX:
        raise InvalidEmail("an email address has at most 254 characters")
    try:
        checked = validate_email(value, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise InvalidEmail(str(exc)) from None
    return checked.normalized.lower()


def username_problem(value: str) -> str | None:
    """Why ``value`` is not a valid username, or None."""
    if USERNAME_RE.fullmatch(value):
        return None
    return "3 to 32 characters of a-z, 0-9, '_', '.', '-'"


def password_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable password, or None."""
    if len(value) < PASSWORD_MIN:
        return f"at least {PASSWORD_MIN} characters"
    if len(value) > PASSWORD_MAX:
        return f"at most {PASSWORD_MAX} characters"
    return None


def public_user(doc: dict[str, Any]) -> dict[str, Any]:
    """A user as the API shows it: never a password, hash or token."""
    return {
        "id": doc["id"],
        "username": doc["username"],
        "email": doc["email"],
        "secondary_emails": [
            {"email": e["email"], "verified": bool(e["verified"])}
            for e in doc.get("secondary_emails", [])
        ],
        "role": doc["role"],
        "created_at": doc["created_at"],
    }


# -- passwords ------------------------------------------------------------------------------


class Passwords:
    """argon2id hashing. Unknown accounts are checked against a dummy hash made with the same
    parameters, so a login costs the same whether the account exists or not."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def _dummy_hash(self) -> str:
        with self._lock:
            if self._dummy is None:
                self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
            return self._dummy

    def warm_up(self) -> None:
        """Make the dummy hash now rather than during the first login."""
        self._dummy_hash()

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """True when ``password`` matches ``stored_hash``; with no hash (unknown account) the
        same work is done against the dummy hash and the answer is False."""
        target = stored_hash if stored_hash is not None else self._dummy_hash()
        try:
            ok = self.hasher.verify(target, password)
        except (VerificationError, InvalidHashError):
            return False
        return bool(ok) and stored_hash is not None

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other parameters than today's."""
        try:
            return self.hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True


# -- opaque tokens (refresh, email verification) ---------------------------------------------


def new_secret() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """How a token is stored: its SHA-256, hex. The tokens are random, so no salt is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def digest_matches(token: str, digest: str | None) -> bool:
    """Constant-time comparison of a token with a stored digest."""
    return digest is not None and hmac.compare_digest(token_digest(token), digest)


def verification_expiry(now: datetime) -> str:
    """When a verification token made ``now`` stops working."""
    return format_time(now + VERIFICATION_TTL)


# -- login throttling -------------------------------------------------------------------------


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failed logins are allowed within ``window`` per account and per client
    address before further attempts get 429."""

    per_account: int = 5
    per_address: int = 20
    window: timedelta = timedelta(minutes=15)

    def retry_after(self, now: datetime, oldest_failure: datetime) -> int:
        """Seconds until the oldest counted failure leaves the window (at least 1)."""
        left = (oldest_failure + self.window - now).total_seconds()
        return max(1, math.ceil(left))


def account_throttle_key(user_id: str | None, identifier: str) -> str:
    """The throttle key of a login attempt's account: the user id when the account exists,
    else the (lowercased) name that was tried, so unknown names are limited just the same."""
    return f"account:{user_id}" if user_id else f"name:{identifier.lower()}"


def address_throttle_key(address: str) -> str:
    return f"address:{address}"


def client_address(forwarded_for: str | None, remote_addr: str | None) -> str:
    """The client's address: the last hop of ``X-Forwarded-For`` (the gateway replaces the
    header with the address it saw), else the peer's address."""
    if forwarded_for:
        last = forwarded_for.split(",")[-1].strip()
        if last:
            return last[:64]
    return remote_addr or "unknown"


# -- what can go wrong ------------------------------------------------------------------------


class AccountError(Exception):
    """A request about accounts that cannot be done; ``status`` is its HTTP answer."""

    status = 400

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class Invalid(AccountError):
    """422: a field's value is not acceptable."""

    status = 422

    @property
    def errors(self) -> list[dict[str, str]]:
        return [{"field": self.field or "body", "message": self.detail}]


class InvalidMany(Invalid):
    """422 about several fields at once."""

    def __init__(self, problems: list[Invalid]) -> None:
        super().__init__(problems[0].detail, problems[0].field)
        self.problems = problems

    @property
    def errors(self) -> list[dict[str, str]]:
        return [e for p in self.problems for e in p.errors]


class Taken(AccountError):
    """409: the username or email address is already used by an account."""

    status = 409


class Missing(AccountError):
    """404: no such thing (on this account)."""

    status = 404


class BadCredentials(AccountError):
    """401: wrong username/password or an unusable refresh token; the same body every time."""

    status = 401


class Throttled(AccountError):
    """429: too many failed logins; try again after ``retry_after`` seconds."""

    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many failed logins; try again later.")
        self.retry_after = retry_after
