"""JSON views of the value objects, as API.md shows them.

Services need these too (an event carries a Message or a Conversation in its JSON
form), so they live here rather than in `schemas/`, which is the HTTP layer's.
The hot paths (polls, history pages) use these functions instead of marshmallow;
schemas/ declares the same shapes for validation and the OpenAPI document, and
tests/test_views.py checks that each function equals its schema's dump. When a
field is added to Message or Conversation, add it here and in the schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from messenger.models import Attachment, Conversation, Member, Message


def format_time(value: datetime) -> str:
    """ISO-8601 UTC with milliseconds: 2026-11-26T21:47:42.123Z."""
    if value.utcoffset():
        value = value.astimezone(UTC)
    # isoformat is several times faster than strftime (this runs per message).
    return value.isoformat(timespec="milliseconds")[:23] + "Z"


def message_json(message: Message) -> dict[str, Any]:
    """A Message (schemas.messages.MessageOut)."""
    return {
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "client_msg_id": message.client_msg_id,
        "body": message.body,
        "created_at": format_time(message.created_at),
        "reply_to": message.reply_to,
        "edited_at": format_time(message.edited_at) if message.edited_at else None,
        "deleted": message.deleted,
        "reactions": {emoji: list(ids) for emoji, ids in message.reactions.items()},
        "attachments": [attachment_json(a) for a in message.attachments],
    }


def attachment_json(attachment: Attachment) -> dict[str, Any]:
    """An Attachment (schemas.attachments.AttachmentOut). Also the stored form in
    a message's `attachments` column: storage/messages.py reads it back."""
    return {
        "id": attachment.attachment_id,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "filename": attachment.filename,
        "sha256": attachment.sha256,
        "width": attachment.width,
        "height": attachment.height,
        "created_at": format_time(attachment.created_at),
    }


def member_json(member: Member) -> dict[str, Any]:
    """A member of a conversation (schemas.conversations.MemberOut)."""
    return {
        "user_id": member.user_id,
        "role": member.role,
        "read_seq": member.read_seq,
        "delivered_seq": member.delivered_seq,
    }


def conversation_json(conv: Conversation) -> dict[str, Any]:
    """A Conversation as its viewer sees it (schemas.conversations.ConversationOut)."""
    return {
        "id": conv.conversation_id,
        "kind": conv.kind,
        "title": conv.title,
        "owner_id": conv.owner_id,
        "created_at": format_time(conv.created_at),
        "last_seq": conv.last_seq,
        "last_message": message_json(conv.last_message) if conv.last_message else None,
        "read_seq": conv.read_seq,
        "unread_count": conv.unread_count,
        "members": [member_json(m) for m in conv.members],
        "request": conv.request,
        "muted_until": muted_json(conv.muted_until),
        "archived": conv.archived,
    }


def muted_json(muted_until: datetime | str | None) -> str | None:
    """null, an ISO time, or "forever" (API.md)."""
    if muted_until is None or isinstance(muted_until, str):
        return muted_until
    return format_time(muted_until)
