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
from messenger.schemas.users import (
    HandleQuery,
    LoginIn,
    PasswordIn,
    ProfileIn,
    RegisterIn,
    SessionInfoOut,
    UserOut,
)
from messenger.services import accounts, sessions

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
    description="A wrong handle and a wrong password get the same 401. "
    "Throttled per client address, per handle and address, and per handle; "
    "past the last, only a correct password from an address that logged in "
    "before passes.",
)
@public
def login() -> Any:
    data = load(LoginIn(), request_json())
    token, user = accounts.login(
        data["handle"],
        data["password"],
        client_address=request.remote_addr or "-",
        user_agent=request.headers.get("User-Agent", ""),
    )
    return {"token": token, "user": UserOut().dump(user)}, 201


@bp.delete("/sessions/current")
@operation("Revoke the token of this request at once.", responses={204: None})
@authenticated
def logout() -> Any:
    accounts.logout(g.user_id, g.token)
    return "", 204


@bp.get("/sessions")
@operation(
    "The caller's sessions, newest first.",
    responses={200: env.SessionList},
    description="`last_used_at` may lag by a minute.",
)
@authenticated
def list_sessions() -> Any:
    found = sessions.list_sessions(g.user_id, g.session_id)
    return {"sessions": SessionInfoOut(many=True).dump(found)}


@bp.delete("/sessions/<int:session_id>")
@operation("Revoke one of the caller's sessions at once.", responses={204: None})
@authenticated
def revoke_session(session_id: int) -> Any:
    sessions.revoke(g.user_id, path_id(session_id))
    return "", 204


@bp.delete("/sessions")
@operation(
    "Revoke every session of the caller but this one, at once.",
    responses={204: None},
)
@authenticated
def revoke_other_sessions() -> Any:
    sessions.revoke_others(g.user_id, g.session_id)
    return "", 204


@bp.put("/users/me/password")
@operation(
    "Change the password; every other session is revoked at once.",
    body=PasswordIn,
    responses={204: None},
    rate_limited=True,
    errors=(403,),
    descriptions={403: "The current password is wrong."},
)
@authenticated
def change_password() -> Any:
    limits.per_user("password")
    data = load(PasswordIn(), request_json())
    accounts.change_password(
        g.user_id, g.session_id, data["current_password"], data["new_password"]
    )
    return "", 204


@bp.patch("/users/me")
@operation(
    "Change the caller's display name.",
    body=ProfileIn,
    responses={200: env.UserEnvelope},
)
@authenticated
def update_me() -> Any:
    data = load(ProfileIn(), request_json())
    user = accounts.update_profile(g.user_id, data["display_name"])
    return {"user": UserOut().dump(user)}


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
    "A user by handle (`handle`), or people search (`q`).",
    query=HandleQuery,
    responses={200: lambda: {"oneOf": [env.UserEnvelope, env.UserList]}},
    rate_limited=True,
    errors=(404,),
    description="With `q`: users whose handle or display name starts with it "
    "(any case), the caller included, the exact handle first; users who "
    "blocked the caller are left out.",
)
@authenticated
def find_user() -> Any:
    data = load(HandleQuery(), request.args)
    if "q" in data:
        limits.per_user("people_search")
        found = accounts.search(g.user_id, data["q"], data["limit"])
        return {"users": UserOut(many=True).dump(found)}
    return {"user": UserOut().dump(accounts.find_by_handle(data["handle"]))}
