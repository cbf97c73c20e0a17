"""/v1/conversations: create, list, show; group rename, members, deletion."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from messenger.api import limits
from messenger.api.auth import authenticated
from messenger.api.common import path_id, request_json
from messenger.api.operation import operation
from messenger.schemas import envelopes as env
from messenger.schemas.base import load
from messenger.schemas.conversations import (
    AddMemberIn,
    ConversationOut,
    CreateConversationIn,
    ListQuery,
    MemberSettingsIn,
    UpdateConversationIn,
)
from messenger.services import conversations, groups, ratelimit

bp = Blueprint("conversations", __name__, url_prefix="/v1")


@bp.post("/conversations")
@operation(
    "Start a direct conversation (200 when it exists already) or a group.",
    body=lambda: {"oneOf": [env.DirectConversationIn, env.GroupConversationIn]},
    responses={200: env.ConversationEnvelope, 201: env.ConversationEnvelope},
    rate_limited=True,
    errors=(404,),
)
@authenticated
def create_conversation() -> Any:
    limits.per_user("conversation")
    data = load(CreateConversationIn(), request_json())
    if data["kind"] == "direct":
        conv, created = conversations.get_or_create_direct(g.user_id, data["user_id"])
        return {"conversation": ConversationOut().dump(conv)}, 201 if created else 200
    conv = conversations.create_group(
        g.user_id, data["title"], data.get("member_ids", [])
    )
    return {"conversation": ConversationOut().dump(conv)}, 201


@bp.get("/conversations")
@operation(
    "The caller's conversations, most recent activity first.",
    description="Archived ones only with `archived=true`; `requests=only` or "
    "`exclude` keeps or leaves out message requests.",
    query=ListQuery,
    responses={200: env.ConversationPage},
)
@authenticated
def list_conversations() -> Any:
    query = load(ListQuery(), request.args)
    found, next_cursor = conversations.list_for(
        g.user_id,
        query["limit"],
        query.get("before"),
        archived=query["archived"],
        requests=query.get("requests"),
    )
    return {
        "conversations": ConversationOut(many=True).dump(found),
        "next": next_cursor,
    }


@bp.get("/conversations/<int:conversation_id>")
@operation(
    "One conversation with its members.",
    responses={200: env.ConversationEnvelope},
)
@authenticated
def get_conversation(conversation_id: int) -> Any:
    conv = conversations.get(g.user_id, path_id(conversation_id))
    return {"conversation": ConversationOut().dump(conv)}


@bp.patch("/conversations/<int:conversation_id>")
@operation(
    "Rename a group.",
    body=UpdateConversationIn,
    responses={200: env.ConversationEnvelope},
    errors=(403,),
    rate_limited=True,
)
@authenticated
def update_conversation(conversation_id: int) -> Any:
    _count_group_change(conversation_id)
    data = load(UpdateConversationIn(), request_json())
    conv = groups.rename(g.user_id, path_id(conversation_id), data["title"])
    return {"conversation": ConversationOut().dump(conv)}


@bp.delete("/conversations/<int:conversation_id>")
@operation(
    "Delete a group (its owner only).",
    responses={204: None},
    errors=(403,),
    rate_limited=True,
)
@authenticated
def delete_conversation(conversation_id: int) -> Any:
    _count_group_change(conversation_id)
    groups.delete(g.user_id, path_id(conversation_id))
    return "", 204


@bp.post("/conversations/<int:conversation_id>/members")
@operation(
    "Add a member to a group (any member).",
    body=AddMemberIn,
    responses={201: env.ConversationEnvelope},
    errors=(403, 409),
    rate_limited=True,
)
@authenticated
def add_member(conversation_id: int) -> Any:
    _count_group_change(conversation_id)
    data = load(AddMemberIn(), request_json())
    conv = groups.add_member(g.user_id, path_id(conversation_id), data["user_id"])
    return {"conversation": ConversationOut().dump(conv)}, 201


@bp.delete("/conversations/<int:conversation_id>/members/<int:user_id>")
@operation(
    "Leave a group, or remove a member (owner only).",
    responses={204: None},
    errors=(403,),
    rate_limited=True,
)
@authenticated
def remove_member(conversation_id: int, user_id: int) -> Any:
    _count_group_change(conversation_id)
    groups.remove_member(g.user_id, path_id(conversation_id), path_id(user_id))
    return "", 204


@bp.post("/conversations/<int:conversation_id>/accept")
@operation("Accept a message request.", responses={204: None})
@authenticated
def accept(conversation_id: int) -> Any:
    conversations.accept(g.user_id, path_id(conversation_id))
    return "", 204


@bp.patch("/conversations/<int:conversation_id>/me")
@operation(
    "Mute or archive a conversation, for the caller.",
    body=MemberSettingsIn,
    responses={200: env.ConversationEnvelope},
    description="A change is a `member_settings` event to the caller alone.",
)
@authenticated
def update_my_settings(conversation_id: int) -> Any:
    data = load(MemberSettingsIn(), request_json())
    conv = conversations.update_settings(g.user_id, path_id(conversation_id), **data)
    return {"conversation": ConversationOut().dump(conv)}


def _count_group_change(conversation_id: int) -> None:
    """Every group change wakes every member: limited per user and per group."""
    limits.per_user("group_change")
    ratelimit.check("group_change_conversation", f"conversation:{conversation_id}")
