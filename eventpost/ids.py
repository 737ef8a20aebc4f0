"""Identifiers: the one id factory of the suite (documents, messages, request IDs).

Services take an ``id_factory`` in ``create_app`` so tests can inject predictable ids; this
is the default everywhere."""

from __future__ import annotations

import os
import socket
import uuid


def new_id() -> str:
    """A fresh random id: 32 lowercase hex digits (a UUID4 without dashes)."""
    raw = bytearray(os.urandom(16))  # what uuid.uuid4() does, without building a UUID
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()


def worker_name(role: str | None = None) -> str:
    """A name unique to this process, for lease owners and AMQP connection names:
    ``[role@]host:pid:random``."""
    name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return f"{role}@{name}" if role else name
