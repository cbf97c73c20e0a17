"""/v1/users and /v1/sessions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from messenger.api import limits
from messenger.api.auth import authenticated, public
from messenger.api.common import path_id, request_json
from messenger.api.operation import operation
from messenger.schemas import envelopes as env
from messenger.schemas.base import load
from messenger.schemas.users import HandleQuery, LoginIn, RegisterIn, UserOut
from messenger.services import accounts, ratelimit

bp = Blueprint("users", __name__, url_prefix="/v1")


@bp.post("/users")
@operation(
    "Create an account.",
    body=RegisterIn,
    responses={201: env.UserEnvelope},
    rate_limited=True,
    errors=(409,),
)
@public
def register() -> Any:
    limits.per_address("register")
    data = load(RegisterIn(), request_json())
    user = accounts.register(data["handle"], data["password"], data.get("display_name"))
    return {"user": UserOut().dump(user)}, 201


@bp.post("/sessions")
@operation(
    "Log in: a bearer token for the other routes.",
    body=LoginIn,
    responses={201: env.SessionOut},
    rate_limited=True,
    errors=(401,),
    description="A wrong handle and a wrong password get the same 401.",
)
@public
def login() -> Any:
    limits.per_address("login")
    data = load(LoginIn(), request_json())
    # Per handle too: guessing one account's password from many addresses.
    ratelimit.check("login_handle", f"handle:{data['handle']}")
    token, user = accounts.login(data["handle"], data["password"])
    return {"token": token, "user": UserOut().dump(user)}, 201


@bp.delete("/sessions/current")
@operation("Revoke the token of this request at once.", responses={204: None})
@authenticated
def logout() -> Any:
    accounts.logout(g.token)
    return "", 204


@bp.get("/users/me")
@operation("The caller's account.", responses={200: env.UserEnvelope})
@authenticated
def me() -> Any:
    return {"user": UserOut().dump(accounts.get_user(g.user_id))}


@bp.get("/users/<int:user_id>")
@operation("A user by id.", responses={200: env.UserEnvelope})
@authenticated
def get_user(user_id: int) -> Any:
    path_id(user_id)
    return {"user": UserOut().dump(accounts.get_user(user_id))}


@bp.get("/users")
@operation(
    "A user by handle.",
    query=HandleQuery,
    responses={200: env.UserEnvelope},
    errors=(404,),
)
@authenticated
def find_user() -> Any:
    data = load(HandleQuery(), request.args)
    return {"user": UserOut().dump(accounts.find_by_handle(data["handle"]))}
