"""Identifiers: the one id factory of the suite (documents, messages, request IDs).

Services take an ``id_factory`` in ``create_app`` so tests can inject predictable ids; this
is the default everywhere."""

from __future__ import annotations

import os
import socket
import uuid


def new_id() -> str:
    """A fresh random id: 32 lowercase hex digits (a UUID4 without dashes)."""
    return uuid.uuid4().hex


def worker_name(role: str | None = None) -> str:
    """A name unique to this process, for lease owners and AMQP connection names:
    ``[role@]host:pid:random``."""
    name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return f"{role}@{name}" if role else name
