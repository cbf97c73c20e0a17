"""/v1/blocks: block and unblock users, list whom the caller blocked."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g

from messenger.api.auth import authenticated
from messenger.api.common import path_id
from messenger.api.operation import operation
from messenger.schemas import envelopes as env
from messenger.schemas.users import UserOut
from messenger.services import blocks

bp = Blueprint("blocks", __name__, url_prefix="/v1")


@bp.put("/blocks/<int:user_id>")
@operation(
    "Block a user (again: nothing changes).",
    responses={204: None},
    errors=(404, 422),
    tag="users",
    description="The blocked user can no longer open a direct conversation with "
    "the caller, send in it, name the caller in a new group or add the caller "
    "to one, and sees no presence or typing of the caller; the caller gets no "
    "push for its messages. Oneself: 422.",
)
@authenticated
def block(user_id: int) -> Any:
    blocks.block(g.user_id, path_id(user_id))
    return "", 204


@bp.delete("/blocks/<int:user_id>")
@operation("Unblock a user.", responses={204: None}, tag="users")
@authenticated
def unblock(user_id: int) -> Any:
    blocks.unblock(g.user_id, path_id(user_id))
    return "", 204


@bp.get("/blocks")
@operation(
    "The users the caller blocked, most recent first.",
    responses={200: env.UserList},
    tag="users",
)
@authenticated
def list_blocks() -> Any:
    return {"users": UserOut(many=True).dump(blocks.blocked_users(g.user_id))}
