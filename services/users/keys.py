"""The signing keys of access tokens: an Ed25519 key ring kept in a JSON file.

The file (``DATA_DIR/keys/users-signing.json`` by default, or the path in
``USERS_SIGNING_KEYS``) holds ``{"keys": [jwk, ...]}``, oldest first; each entry is an OKP
Ed25519 JWK with its private part ``d``, a ``kid`` (the RFC 7638 thumbprint) and
``created_at``. It is created with mode 0600 when missing, atomically (written aside and
hard-linked into place), so several processes starting at once end up with the same keys.

Rotation (:func:`rotate_key_file`, ``invoke rotate-keys``) appends a new key: from then on the
newest key signs and the older ones still verify, until they are dropped. Running processes
notice the change (the file is checked at most once a second, and at once when a token names
an unknown ``kid``). Only public parts ever leave this module (:meth:`KeyRing.jwks`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventpost.auth import AUDIENCE, ISSUER, Claims, KeySet, UnknownKey
from eventpost.ids import new_id
from eventpost.settings import Settings
from eventpost.timeutil import format_time, utcnow

log = logging.getLogger(__name__)

KEY_FILE_NAME = "users-signing.json"
PUBLIC_FIELDS = ("kty", "crv", "x", "kid", "alg", "use")


def default_key_path(settings: Settings) -> Path:
    """Where the key ring lives: ``USERS_SIGNING_KEYS`` when set, else under DATA_DIR."""
    if settings.users_signing_keys:
        return Path(settings.users_signing_keys)
    return settings.data_dir / "keys" / KEY_FILE_NAME


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _thumbprint(x: str) -> str:
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode("ascii")).digest())


def new_private_jwk(now: datetime | None = None) -> dict[str, Any]:
    """A fresh Ed25519 key as a private JWK with ``kid`` and ``created_at``."""
    key = Ed25519PrivateKey.generate()
    d = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    x = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    xs = _b64(x)
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": xs,
        "d": _b64(d),
        "kid": _thumbprint(xs),
        "alg": "EdDSA",
        "use": "sig",
        "created_at": format_time(now or utcnow()),
    }


def public_jwk(jwk: dict[str, Any]) -> dict[str, Any]:
    """Only the public members of a JWK (never ``d``)."""
    return {k: jwk[k] for k in PUBLIC_FIELDS if k in jwk}


def _write_private(directory: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` to a new 0600 temporary file in ``directory`` (fsynced)."""
    fd, tmp = tempfile.mkstemp(prefix=".keys-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def ensure_key_file(path: Path) -> None:
    """Create the key file with one key if it is missing (safe when racing other processes:
    the file is made aside and hard-linked into place, which fails if one is already there)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = _write_private(path.parent, {"keys": [new_private_jwk()]})
    try:
        os.link(tmp, path)
        log.info("created signing key file %s", path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_key_file(path: Path) -> list[dict[str, Any]]:
    """The private JWKs of a key file, oldest first; ValueError when it is unusable."""
    data = json.loads(path.read_text(encoding="utf-8"))
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError(f"{path}: no keys")
    for jwk in keys:
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not jwk.get("d"):
            raise ValueError(f"{path}: every key must be a private Ed25519 JWK")
    mode = path.stat().st_mode & 0o077
    if mode:
        log.warning("signing key file %s is readable by others (mode %o)", path, mode)
    return keys


def rotate_key_file(path: Path, keep: int = 2) -> dict[str, Any]:
    """Add a new signing key; keep the ``keep`` newest keys (the new one included), so the
    previous key still verifies the tokens it signed. Returns the new key's public JWK."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    ensure_key_file(path)
    with _file_lock(path):
        keys = read_key_file(path)
        new = new_private_jwk()
        keys = [*keys, new][-keep:]
        tmp = _write_private(path.parent, {"keys": keys})
        os.replace(tmp, path)
    log.info("rotated signing keys in %s; new kid %s", path, new["kid"])
    return public_jwk(new)


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[int, int, int]
    signing_kid: str
    signing_key: Ed25519PrivateKey
    jwks: dict[str, Any]
    keyset: KeySet


class KeyRing:
    """The users service's key ring: signs access tokens with the newest key and verifies
    them with every key in the file (no HTTP to itself)."""

    def __init__(
        self,
        path: Path,
        *,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        check_interval: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.issuer = issuer
        self.audience = audience
        self._check_interval = check_interval
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._checked_at = 0.0
        ensure_key_file(path)
        self._loaded = self._load()

    def _stamp(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load(self) -> _Loaded:
        stamp = self._stamp()
        keys = read_key_file(self.path)
        newest = keys[-1]
        private = Ed25519PrivateKey.from_private_bytes(_unb64(newest["d"]))
        jwks = {"keys": [public_jwk(k) for k in reversed(keys)]}
        keyset = KeySet(jwks, issuer=self.issuer, audience=self.audience)
        self._checked_at = self._monotonic()
        return _Loaded(stamp, newest["kid"], private, jwks, keyset)

    def refresh(self, force: bool = False) -> None:
        """Reload the file if it changed (checked at most every ``check_interval`` seconds
        unless ``force``)."""
        if not force and self._monotonic() - self._checked_at < self._check_interval:
            return
        with self._lock:
            try:
                if self._stamp() != self._loaded.stamp:
                    self._loaded = self._load()
                else:
                    self._checked_at = self._monotonic()
            except (OSError, ValueError):
                log.exception("could not reload the signing keys; keeping the old ones")

    @property
    def signing_kid(self) -> str:
        return self._loaded.signing_kid

    def jwks(self) -> dict[str, Any]:
        """The public JWKS (newest key first)."""
        self.refresh()
        return self._loaded.jwks

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT over ``claims`` signed with the newest key (its ``kid`` in the header)."""
        self.refresh()
        loaded = self._loaded
        return jwt.encode(
            claims,
            loaded.signing_key,
            algorithm="EdDSA",
            headers={"kid": loaded.signing_kid, "typ": "JWT"},
        )

    def access_token(self, user_id: str, role: str, now: datetime, ttl: int) -> str:
        """An access token for ``user_id`` valid ``ttl`` seconds from ``now``."""
        issued = int(now.timestamp())
        return self.sign(
            {
                "iss": self.issuer,
                "aud": self.audience,
                "sub": user_id,
                "role": role,
                "iat": issued,
                "exp": issued + ttl,
                "jti": new_id(),
            }
        )

    def verify(self, token: str) -> Claims:
        """The claims of a valid access token (raises :class:`eventpost.auth.InvalidToken`)."""
        self.refresh()
        try:
            return self._loaded.keyset.verify(token)
        except UnknownKey:
            self.refresh(force=True)
            return self._loaded.keyset.verify(token)
