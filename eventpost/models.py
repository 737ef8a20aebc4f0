"""Model bases and list conventions the domains share: pure, no HTTP (the web side of
validation, bodies and their 400/413/415/422 answers, is :mod:`eventpost.validation`)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of every request body and query model: unknown fields refused, no coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=False)


#: API.md's list conventions: ``?limit=`` from 1, default 20; larger values are clamped to 100.
LIMIT_DEFAULT = 20
LIMIT_MAX = 100
_INTEGER = re.compile(r"\s*[+-]?\d{1,9}\s*")


def parse_limit(raw: str | None) -> int:
    """The page size a ``limit`` query parameter asks for: the default when absent, at most
    :data:`LIMIT_MAX`; raises ValueError (with the message for the client) when it is not an
    integer or below 1."""
    if raw is None:
        return LIMIT_DEFAULT
    if not _INTEGER.fullmatch(raw):
        raise ValueError("must be an integer from 1 to 100")
    limit = int(raw)
    if limit < 1:
        raise ValueError("must be at least 1")
    return min(limit, LIMIT_MAX)
