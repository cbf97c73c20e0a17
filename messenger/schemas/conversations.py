"""Conversations and their members."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from messenger.models import Conversation
from messenger.schemas.base import (
    TITLE,
    Id,
    QuerySchema,
    StrictSchema,
    UtcTime,
    limit_field,
)
from messenger.services.conversations import GROUP_MAX_MEMBERS
from messenger.views import message_json


class CreateConversationIn(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(["direct", "group"]))
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
    # "<microseconds>.<conversation id>", as services.conversations encodes it;
    # the bounds keep both within what the service can decode.
    before = fields.String(
        validate=validate.Regexp(
            r"^[0-9]{1,17}\.[0-9]{1,18}\Z",
            error="A cursor returned as next by an earlier page.",
        )
    )


class MemberOut(Schema):
    user_id = fields.Integer()
    role = fields.String()
    read_seq = fields.Integer()
    delivered_seq = fields.Integer()


class ConversationOut(Schema):
    """A Conversation; views.conversation_json writes the same for events."""

    id = fields.Integer(attribute="conversation_id")
    kind = fields.String()
    title = fields.String(allow_none=True)
    owner_id = fields.Integer(allow_none=True)
    created_at = UtcTime()
    last_seq = fields.Integer()
    last_message = fields.Method("_last_message")
    read_seq = fields.Integer()
    unread_count = fields.Integer()
    members = fields.List(fields.Nested(MemberOut))

    def _last_message(self, conv: Conversation) -> dict[str, Any] | None:
        return message_json(conv.last_message) if conv.last_message else None
