"""History, sending, receipts and typing."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from messenger.api import limits
from messenger.api.auth import authenticated
from messenger.api.common import path_id, request_json
from messenger.api.operation import operation
from messenger.schemas import envelopes as env
from messenger.schemas.base import load
from messenger.schemas.messages import (
    EditMessageIn,
    HistoryQuery,
    ReactionIn,
    ReceiptIn,
    SendMessageIn,
)
from messenger.services import messages, receipts, typing_indicator
from messenger.views import message_json

bp = Blueprint("messages", __name__, url_prefix="/v1")


@bp.post("/conversations/<int:conversation_id>/messages")
@operation(
    "Send a message; a retry with the same client_msg_id answers 200.",
    body=SendMessageIn,
    responses={200: env.MessageEnvelope, 201: env.MessageEnvelope},
    rate_limited=True,
)
@authenticated
def send_message(conversation_id: int) -> Any:
    limits.per_user("send")
    data = load(SendMessageIn(), request_json())
    message, created = messages.send(g.user_id, path_id(conversation_id), **data)
    return {"message": message_json(message)}, 201 if created else 200


@bp.get("/conversations/<int:conversation_id>/messages")
@operation(
    "A page of a conversation's messages, ascending seq.",
    query=HistoryQuery,
    responses={200: env.MessagePage},
    description="`before` and `after` exclude each other (422 with both).",
)
@authenticated
def history(conversation_id: int) -> Any:
    query = load(HistoryQuery(), request.args)
    page, next_before, next_after = messages.history(
        g.user_id,
        path_id(conversation_id),
        limit=query["limit"],
        before=query.get("before"),
        after=query.get("after"),
    )
    return {
        "messages": [message_json(m) for m in page],
        "next_before": next_before,
        "next_after": next_after,
    }


@bp.post("/conversations/<int:conversation_id>/receipts")
@operation(
    "Move the caller's delivered or read position forward.",
    body=ReceiptIn,
    responses={204: None},
)
@authenticated
def post_receipt(conversation_id: int) -> Any:
    data = load(ReceiptIn(), request_json())
    receipts.mark(g.user_id, path_id(conversation_id), data["type"], data["seq"])
    return "", 204


@bp.post("/conversations/<int:conversation_id>/typing")
@operation(
    "Tell the other members the caller is typing (ephemeral).",
    responses={204: None},
    rate_limited=True,
)
@authenticated
def typing(conversation_id: int) -> Any:
    limits.per_user("typing")
    limits.per_user("typing_conversation", scope=path_id(conversation_id))
    typing_indicator.announce(g.user_id, conversation_id)
    return "", 204


@bp.patch("/conversations/<int:conversation_id>/messages/<int:seq>")
@operation(
    "Edit a message's body (its sender only); sets edited_at.",
    body=EditMessageIn,
    responses={200: env.MessageEnvelope},
    rate_limited=True,
    errors=(403, 409),
    descriptions={
        403: "Another member's message.",
        409: "The message is deleted.",
    },
)
@authenticated
def edit_message(conversation_id: int, seq: int) -> Any:
    limits.per_user("edit")
    data = load(EditMessageIn(), request_json())
    message = messages.edit(
        g.user_id, path_id(conversation_id), path_id(seq), data["body"]
    )
    return {"message": message_json(message)}


@bp.delete("/conversations/<int:conversation_id>/messages/<int:seq>")
@operation(
    "Delete a message (its sender, or the group's owner): a tombstone keeps the seq.",
    responses={204: None},
    rate_limited=True,
    errors=(403,),
    descriptions={403: "Another member's message (and the caller owns no group)."},
)
@authenticated
def delete_message(conversation_id: int, seq: int) -> Any:
    limits.per_user("edit")
    messages.delete(g.user_id, path_id(conversation_id), path_id(seq))
    return "", 204


@bp.put("/conversations/<int:conversation_id>/messages/<int:seq>/reaction")
@operation(
    "Set the caller's one reaction on a message (a new one replaces the old).",
    body=ReactionIn,
    responses={200: env.MessageEnvelope},
    rate_limited=True,
    errors=(409,),
    descriptions={409: "The message is deleted."},
)
@authenticated
def set_reaction(conversation_id: int, seq: int) -> Any:
    limits.per_user("reaction")
    data = load(ReactionIn(), request_json())
    message = messages.react(
        g.user_id, path_id(conversation_id), path_id(seq), data["emoji"]
    )
    return {"message": message_json(message)}


@bp.delete("/conversations/<int:conversation_id>/messages/<int:seq>/reaction")
@operation(
    "Remove the caller's reaction from a message (none: nothing changes).",
    responses={200: env.MessageEnvelope},
    rate_limited=True,
)
@authenticated
def remove_reaction(conversation_id: int, seq: int) -> Any:
    limits.per_user("reaction")
    message = messages.react(g.user_id, path_id(conversation_id), path_id(seq), None)
    return {"message": message_json(message)}
