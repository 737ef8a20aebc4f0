"""The users service's HTTP resources (Falcon nouns): parse the request, call the use case of
:mod:`services.users.service`, write the response. The rules live in the use cases and
:mod:`services.users.domain`; their errors are rendered by :mod:`eventpost.web`."""

from __future__ import annotations

from typing import Any

import falcon
from pydantic import Field

from eventpost.auth import authenticate, unauthorized
from eventpost.problems import ValidationProblem
from eventpost.validation import StrictModel, parse_body
from eventpost.web import dumps
from services.users import domain
from services.users.domain import public_user
from services.users.keys import KeyRing
from services.users.service import UsersService

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


def client_address(forwarded_for: str | None, remote_addr: str | None) -> str:
    """The client's address: the last hop of ``X-Forwarded-For`` (the gateway replaces the
    header with the address it saw), else the peer's address."""
    if forwarded_for:
        last = forwarded_for.split(",")[-1].strip()
        if last:
            return last[:64]
    return remote_addr or "unknown"


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


class UsersServiceResource:
    """What every resource of the service is given: the use cases, the key ring that signs
    access tokens, and the body size limit."""

    def __init__(self, service: UsersService, keys: KeyRing, max_body_bytes: int) -> None:
        self.service = service
        self.keys = keys
        self.max_body = max_body_bytes

    def current_user(self, req: falcon.Request) -> dict[str, Any]:
        """The account of the request's access token; 401 when the token is bad or the
        account no longer exists."""
        claims = authenticate(req, self.keys)
        user = self.service.registration.account(claims.sub)
        if user is None:
            raise unauthorized()
        return user


def _no_store(resp: falcon.Response) -> None:
    resp.set_header("Cache-Control", "no-store")


class UsersResource(UsersServiceResource):
    """``/v1/users``: sign-up."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_body(req, SignUp, self.max_body)
        user = self.service.registration.sign_up(
            body.username, body.email, body.password, request_id=req.context.request_id
        )
        resp.status = falcon.HTTP_201
        resp.location = "/v1/users/me"
        resp.media = public_user(user)


class TokenResource(UsersServiceResource):
    """``/v1/auth/token``: login with username (or email) and password."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_body(req, Login, self.max_body)
        client = client_address(req.get_header("X-Forwarded-For"), req.remote_addr)
        pair = self.service.logins.login(body.username, body.password, client)
        _no_store(resp)
        resp.media = pair.as_json()


class RefreshResource(UsersServiceResource):
    """``/v1/auth/refresh``: a new token pair for a refresh token (which is spent)."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_body(req, RefreshBody, self.max_body)
        pair = self.service.tokens.refresh(body.refresh_token)
        _no_store(resp)
        resp.media = pair.as_json()


class JwksResource(UsersServiceResource):
    """``/v1/auth/jwks``: the public keys that sign access tokens."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_header("Cache-Control", "public, max-age=60")
        resp.content_type = "application/json"
        resp.text = dumps(self.keys.jwks())


class MeResource(UsersServiceResource):
    """``/v1/users/me``: the signed-in account."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = public_user(self.current_user(req))

    def on_patch(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self.current_user(req)
        body = parse_body(req, EmailBody, self.max_body)
        resp.media = public_user(self.service.registration.change_primary(user["id"], body.email))

    def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self.current_user(req)
        self.service.registration.delete(user["id"], request_id=req.context.request_id)
        resp.status = falcon.HTTP_204


class EmailsResource(UsersServiceResource):
    """``/v1/users/me/emails``: add a secondary address."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self.current_user(req)
        body = parse_body(req, EmailBody, self.max_body)
        changed = self.service.addresses.add(
            user["id"], body.email, request_id=req.context.request_id
        )
        resp.status = falcon.HTTP_201
        resp.media = public_user(changed)


class EmailVerificationResource(UsersServiceResource):
    """``/v1/users/me/emails/verify``: verify a secondary address with its token."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        user = self.current_user(req)
        body = parse_body(req, VerifyBody, self.max_body)
        resp.media = public_user(self.service.addresses.verify(user["id"], body.email, body.token))


class EmailResource(UsersServiceResource):
    """``/v1/users/me/emails/{email}``: remove a secondary address."""

    def on_delete(self, req: falcon.Request, resp: falcon.Response, email: str) -> None:
        user = self.current_user(req)
        resp.media = public_user(self.service.addresses.remove(user["id"], email))
