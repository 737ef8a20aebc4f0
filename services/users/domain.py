"""Rules of accounts and identity, with no I/O: what a valid username, password or email is,
how a user is shown, how refresh tokens and verification tokens are made and checked, and how
many failed logins are allowed. Broken rules raise :mod:`eventpost.errors` errors.

Password hashing (argon2) is in :mod:`services.users.passwords`."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from email_validator import EmailNotValidError, validate_email

from eventpost.errors import Invalid, InvalidMany
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


def checked_email(value: str, field: str = "email") -> str:
    """The canonical form of ``value``; :class:`Invalid` on ``field`` when it is no address."""
    try:
        return normalize_email(value)
    except InvalidEmail as exc:
        raise Invalid(f"not a valid email address: {exc}", field) from None


def checked_sign_up(username: str, email: str, password: str) -> str:
    """Check a sign-up's fields all at once (one :class:`Invalid` per broken field, as
    :class:`InvalidMany` when there are several); returns the canonical email."""
    problems = []
    if (problem := username_problem(username)) is not None:
        problems.append(Invalid(problem, "username"))
    if (problem := password_problem(password)) is not None:
        problems.append(Invalid(problem, "password"))
    try:
        email = checked_email(email)
    except Invalid as exc:
        problems.append(exc)
    if problems:
        raise problems[0] if len(problems) == 1 else InvalidMany(problems)
    return email


def checked_password(password: str) -> str:
    """``password`` when it is acceptable, else :class:`Invalid` on ``password``."""
    if (problem := password_problem(password)) is not None:
        raise Invalid(problem, "password")
    return password


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
    """The throttle key of a login attempt's client address."""
    return f"address:{address}"
