"""The users service's HTTP resources (Falcon nouns); the rules live in
:mod:`services.users.accounts`."""

from __future__ import annotations

from typing import Any

import falcon
from pydantic import Field

from eventpost.auth import authenticate, unauthorized
from eventpost.problems import PROBLEM_JSON, ValidationProblem, problem_body
from eventpost.validation import StrictModel, parse_body
from eventpost.web import dumps
from services.users import domain
from services.users.accounts import Accounts
from services.users.domain import AccountError, public_user
from services.users.keys import KeyRing

# Bodies: types and rough sizes only; the rules (username pattern, email syntax, password
# length) are checked by the use cases so the messages name the field. Anything else in a
# body (role, id, created_at, a hash, ...) is an unknown field: 422.
_SHORT = 320


class SignUp(StrictModel):
    username: str = Field(max_length=_SHORT)
    email: str = Field(max_length=_SHORT)
    password: str = Field(max_length=domain.PASSWORD_MAX)


class Login(StrictModel):
    username: str = Field(max_length=_SHORT)
    password: str = Field(max_length=domain.PASSWORD_MAX)


class RefreshBody(StrictModel):
    refresh_token: str = Field(max_length=_SHORT)


class EmailBody(StrictModel):
    email: str = Field(max_length=_SHORT)


class VerifyBody(StrictModel):
    email: str = Field(max_length=_SHORT)
    token: str = Field(max_length=_SHORT)


def account_error_handler(
    req: falcon.Request, resp: falcon.Response, exc: AccountError, params: dict[str, Any]
) -> None:
    """Render an :class:`AccountError` as problem+json."""
    resp.status = exc.status
    resp.content_type = PROBLEM_JSON
    errors = exc.errors if isinstance(exc, domain.Invalid) else None
    resp.text = dumps(problem_body(exc.status, detail=exc.detail, errors=errors))
    if isinstance(exc, domain.Throttled):
        resp.set_header("Retry-After", str(exc.retry_after))
    if exc.status == 401:
        resp.set_header("WWW-Authenticate", "Bearer")


class NoQueryParameters:
    """Middleware: no endpoint of this service takes query parameters, so any is refused
    (422) rather than silently ignored."""

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: object, params: dict
    ) -> None:
        if req.path.startswith("/v1/") and req.query_string:
            names = sorted(req.params) or ["query"]
            raise ValidationProblem(
                [{"field": name, "message": "unknown query parameter"} for name in names],
                detail="This endpoint takes no query parameters.",
            )


class _Base:
    def __init__(self, accounts: Accounts, keys: KeyRing, max_body_bytes: int) -> None:
        self.accounts = accounts
        self.keys = keys
        self.max_body = max_body_bytes

    def current_user(self, req: falcon.Request) -> dict[str, Any]:
        """The account of the request's access token; 401 when the token is bad or the
        account no longer exists."""
        claims = authenticate(req, self.keys)
        user = self.accounts.get(claims.sub)
        if user is None:
            raise unauthorized()
        return user


def _no_store(resp: falcon.Response) -> None:
    resp.set_header("Cache-Control", "no-store")


class UsersResource(_Base):
    """``/v1/users``: sign-up."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_body(req, SignUp, self.max_body)
        user = self.accounts.sign_up(
            body.username, body.email, body.password, request_id=req.context.request_id
        )
        resp.status = falcon.HTTP_201
        resp.location = "/v1/users/me"
        resp.media = public_user(user)


class TokenResource(_Base):
    """``/v1/auth/token``: login with username (or email) and password."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_body(req, Login, self.max_body)
        client = domain.client_address(req.get_header("X-Forwarded-For"), req.remote_addr)
        pair = self.accounts.login(body.username, body.password, client)
        _no_store(resp)
        resp.media = pair.as_json()


class RefreshResource(_Base):
    """``/v1/auth/refresh``: a new token pair for a refresh token (which is spent)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_body(req, RefreshBody, self.max_body)
        pair = self.accounts.refresh(body.refresh_token)
        _no_store(resp)
        resp.media = pair.as_json()


class JwksResource(_Base):
    """``/v1/auth/jwks``: the public keys that sign access tokens."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_header("Cache-Control", "public, max-age=60")
        resp.content_type = "application/json"
        resp.text = dumps(self.keys.jwks())


class MeResource(_Base):
    """``/v1/users/me``: the signed-in account."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = public_user(self.current_user(req))

    def on_patch(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self.current_user(req)
        body = parse_body(req, EmailBody, self.max_body)
        resp.media = public_user(self.accounts.change_primary(user["id"], body.email))

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self.current_user(req)
        self.accounts.delete(user["id"], request_id=req.context.request_id)
        resp.status = falcon.HTTP_204


class EmailsResource(_Base):
    """``/v1/users/me/emails``: add a secondary address."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self.current_user(req)
        body = parse_body(req, EmailBody, self.max_body)
        changed = self.accounts.add_email(user["id"], body.email, request_id=req.context.request_id)
        resp.status = falcon.HTTP_201
        resp.media = public_user(changed)


class EmailVerificationResource(_Base):
    """``/v1/users/me/emails/verify``: verify a secondary address with its token."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self.current_user(req)
        body = parse_body(req, VerifyBody, self.max_body)
        resp.media = public_user(self.accounts.verify_email(user["id"], body.email, body.token))


class EmailResource(_Base):
    """``/v1/users/me/emails/{email}``: remove a secondary address."""

    def on_delete(self, req: falcon.Request, resp: falcon.Response, email: str) -> None:
        user = self.current_user(req)
        resp.media = public_user(self.accounts.remove_email(user["id"], email))
