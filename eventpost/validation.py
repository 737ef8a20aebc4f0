"""Strict JSON request bodies: read within the size limit, parse, validate with pydantic.

Unknown fields are refused (422), types are strict (a ``{"$ne": null}`` where a string is
expected is a 422, so no operator ever reaches a store), malformed JSON is a 400."""

from __future__ import annotations

from typing import Any, TypeVar

import falcon
from pydantic import BaseModel, ValidationError

from eventpost.models import LIMIT_DEFAULT, LIMIT_MAX, StrictModel, parse_limit
from eventpost.problems import ValidationProblem

__all__ = [
    "LIMIT_DEFAULT",
    "LIMIT_MAX",
    "StrictModel",
    "fields_set",
    "parse_body",
    "parse_limit",
    "parse_model",
    "read_body",
    "validation_errors",
]

M = TypeVar("M", bound=BaseModel)

_MESSAGES = {"extra_forbidden": "unknown field"}


def read_body(req: falcon.Request, max_bytes: int) -> bytes:
    """The raw body, or 413 when it is larger than ``max_bytes``."""
    length = req.content_length
    if length is not None and length > max_bytes:
        raise falcon.HTTPContentTooLarge(
            title="Content Too Large",
            description=f"The request body is larger than {max_bytes} bytes.",
        )
    raw = req.bounded_stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise falcon.HTTPContentTooLarge(
            title="Content Too Large",
            description=f"The request body is larger than {max_bytes} bytes.",
        )
    return raw


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic's errors as API.md's ``[{"field", "message"}]``."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in err["loc"]) or "body"
        out.append({"field": loc, "message": _MESSAGES.get(err["type"], err["msg"])})
    return out


def parse_model(raw: bytes, model: type[M]) -> M:
    """Validate JSON bytes against ``model``: 400 if not JSON, 422 if not valid."""
    if not raw.strip():
        raise ValidationProblem(
            [{"field": "body", "message": "a JSON object is required"}],
            detail="The request has no body.",
        )
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise falcon.HTTPBadRequest(
                title="Malformed JSON", description="The request body is not valid JSON."
            ) from None
        errors = validation_errors(exc)
        raise ValidationProblem(errors, detail=errors[0]["message"]) from None


def parse_body(req: falcon.Request, model: type[M], max_bytes: int) -> M:
    """Read the request's JSON body and validate it against ``model``."""
    if req.content_type and not req.content_type.split(";")[0].strip().endswith("json"):
        raise falcon.HTTPUnsupportedMediaType(
            title="Unsupported Media Type", description="Send application/json."
        )
    return parse_model(read_body(req, max_bytes), model)


def fields_set(model: BaseModel) -> dict[str, Any]:
    """Only the fields the client sent (for PATCH)."""
    return model.model_dump(exclude_unset=True)
