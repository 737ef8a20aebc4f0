"""Password hashing with argon2id: the one part of the users service that does costly work on
every sign-up and login (kept out of :mod:`services.users.domain`, which stays pure)."""

from __future__ import annotations

import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError


class Passwords:
    """argon2id hashing. Unknown accounts are checked against a dummy hash made with the same
    parameters, so a login costs the same whether the account exists or not."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        """A new argon2id hash of ``password`` with today's parameters."""
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
