"""RFC 9457 problem details: the one error shape every EventPost service answers with."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import falcon

PROBLEM_JSON = "application/problem+json"


class ValidationProblem(falcon.HTTPUnprocessableEntity):
    """422 with a list of ``{"field", "message"}`` errors."""

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None) -> None:
        super().__init__(
            title="Unprocessable Content",
            description=detail or "The request did not pass validation.",
        )
        self.errors = errors


def field_error(field: str, message: str) -> ValidationProblem:
    """A 422 about one field."""
    return ValidationProblem([{"field": field, "message": message}], detail=message)


def problem_body(
    status: int, title: str | None = None, detail: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON object of a problem with ``status``."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title or phrase,
        "status": status,
        "detail": detail or title or phrase,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_from_http_error(exc: falcon.HTTPError) -> dict[str, Any]:
    """The problem object of a Falcon HTTP error (including ours)."""
    status = falcon.http_status_to_code(exc.status)
    # Falcon's default title is the status line ("404 Not Found"): use the plain phrase.
    title = exc.title if exc.title and not exc.title[:3].isdigit() else None
    return problem_body(
        status,
        title=title,
        detail=exc.description,
        errors=getattr(exc, "errors", None),
    )
