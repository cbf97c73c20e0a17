"""Conversations and their members."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from messenger.schemas.base import (
    TITLE,
    CompleteOut,
    Id,
    QuerySchema,
    StrictSchema,
    UtcTime,
    limit_field,
)
from messenger.schemas.messages import MessageOut
from messenger.services import cursors
from messenger.services.conversations import GROUP_MAX_MEMBERS

CONVERSATION_KINDS = ("direct", "group")
MEMBER_ROLES = ("owner", "member")


class CreateConversationIn(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(CONVERSATION_KINDS))
    user_id = Id()
    title = fields.String(validate=TITLE)
    member_ids = fields.List(Id(), validate=validate.Length(max=GROUP_MAX_MEMBERS))

    @validates_schema
    def _fields_of_kind(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("kind") == "direct":
            if "user_id" not in data:
                raise ValidationError("Missing data for required field.", "user_id")
            for name in ("title", "member_ids"):
                if name in data:
                    raise ValidationError(
                        "Not allowed for a direct conversation.", name
                    )
        elif data.get("kind") == "group":
            if "title" not in data:
                raise ValidationError("Missing data for required field.", "title")
            if "user_id" in data:
                raise ValidationError(
                    "Not allowed for a group; use member_ids.", "user_id"
                )


class UpdateConversationIn(StrictSchema):
    title = fields.String(required=True, validate=TITLE)


class AddMemberIn(StrictSchema):
    user_id = Id(required=True)


class ListQuery(QuerySchema):
    limit = limit_field()
    # "<microseconds>.<conversation id>", as services.conversations encodes it.
    before = fields.String(
        validate=validate.Regexp(cursors.pattern(1), error=cursors.INVALID)
    )


class MemberOut(CompleteOut):
    user_id = fields.Integer()
    role = fields.String(validate=validate.OneOf(MEMBER_ROLES))
    read_seq = fields.Integer()
    delivered_seq = fields.Integer()


class ConversationOut(CompleteOut):
    """A Conversation; views.conversation_json writes the same for events."""

    id = fields.Integer(attribute="conversation_id")
    kind = fields.String(validate=validate.OneOf(CONVERSATION_KINDS))
    title = fields.String(allow_none=True)
    owner_id = fields.Integer(allow_none=True)
    created_at = UtcTime()
    last_seq = fields.Integer()
    last_message = fields.Nested(MessageOut, allow_none=True)
    read_seq = fields.Integer()
    unread_count = fields.Integer()
    members = fields.List(fields.Nested(MemberOut))
