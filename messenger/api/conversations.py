"""/v1/conversations: create, list, show."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from messenger.api.auth import authenticated
from messenger.api.common import path_id, request_json
from messenger.schemas.base import load
from messenger.schemas.conversations import (
    ConversationOut,
    CreateConversationIn,
    ListQuery,
)
from messenger.services import conversations

bp = Blueprint("conversations", __name__, url_prefix="/v1")


@bp.post("/conversations")
@authenticated
def create_conversation() -> Any:
    data = load(CreateConversationIn(), request_json())
    if data["kind"] == "direct":
        conv, created = conversations.get_or_create_direct(g.user_id, data["user_id"])
        return {"conversation": ConversationOut().dump(conv)}, 201 if created else 200
    conv = conversations.create_group(
        g.user_id, data["title"], data.get("member_ids", [])
    )
    return {"conversation": ConversationOut().dump(conv)}, 201


@bp.get("/conversations")
@authenticated
def list_conversations() -> Any:
    query = load(ListQuery(), request.args)
    found, next_cursor = conversations.list_for(
        g.user_id, query["limit"], query.get("before")
    )
    return {
        "conversations": ConversationOut(many=True).dump(found),
        "next": next_cursor,
    }


@bp.get("/conversations/<int:conversation_id>")
@authenticated
def get_conversation(conversation_id: int) -> Any:
    conv = conversations.get(g.user_id, path_id(conversation_id))
    return {"conversation": ConversationOut().dump(conv)}
