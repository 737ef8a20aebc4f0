"""Domain errors: what a use case says when a request cannot be done, in the suite's one error
idiom.

Domain code raises these and knows nothing of HTTP; the web edge (:mod:`eventpost.web`, for
the WSGI services and the ASGI gateway alike) renders every one as RFC 9457 problem+json with
the class's ``status``. So a service has no exception handlers of its own, and a rule reads
the same wherever it is checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class DomainError(Exception):
    """A request that cannot be done; ``status`` is its HTTP answer, ``detail`` the sentence
    the client reads, ``headers`` any header the answer must carry (``Retry-After``)."""

    status = 400
    title: str | None = None

    def __init__(
        self,
        detail: str,
        field: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})

    @property
    def errors(self) -> list[dict[str, str]] | None:
        """The ``errors`` member of the problem (422 only)."""
        return None


class Invalid(DomainError):
    """422: a field's value is not acceptable (``field`` names it; ``body`` when none)."""

    status = 422
    title = "Unprocessable Content"

    @property
    def errors(self) -> list[dict[str, str]]:
        return [{"field": self.field or "body", "message": self.detail}]


class InvalidMany(Invalid):
    """422 about several fields at once; ``detail`` defaults to the first problem's."""

    def __init__(self, problems: Sequence[Invalid], detail: str | None = None) -> None:
        super().__init__(detail or problems[0].detail, problems[0].field)
        self.problems = list(problems)

    @property
    def errors(self) -> list[dict[str, str]]:
        return [e for p in self.problems for e in p.errors]


class Unauthenticated(DomainError):
    """401: wrong credentials or an unusable token; the edge adds ``WWW-Authenticate``."""

    status = 401


class Forbidden(DomainError):
    """403: the caller may not do this."""

    status = 403


class Missing(DomainError):
    """404: no such thing (or one the caller may not see: it looks the same)."""

    status = 404


class Conflict(DomainError):
    """409: the thing exists already, or is in a state that does not allow the change."""

    status = 409


class PreconditionFailed(DomainError):
    """412: ``If-Match`` names a version that is not the current one."""

    status = 412


class Throttled(DomainError):
    """429: too many attempts; try again after ``retry_after`` seconds."""

    status = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class Unavailable(DomainError):
    """503: something the request needs cannot be reached now; try again."""

    status = 503
