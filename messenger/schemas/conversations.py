"""Conversations and their members."""

from __future__ import annotations

from datetime import datetime
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
from messenger.views import muted_json

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


class JsonBoolean(fields.Boolean):
    """true or false, nothing that merely looks like one (1, "yes")."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> Any:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class MutedUntilField(fields.Field):
    """null, an ISO-8601 time with a zone, or "forever"."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "metadata",
            {
                "description": 'null (not muted), a time, or "forever".',
                "type": "string",
                "nullable": True,
            },
        )
        super().__init__(**kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return muted_json(value)

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> Any:
        if value == "forever":
            return value
        if not isinstance(value, str) or len(value) > 40:
            raise ValidationError('A time (ISO-8601 with a zone) or "forever".')
        try:
            at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(
                'A time (ISO-8601 with a zone) or "forever".'
            ) from None
        if at.tzinfo is None:
            raise ValidationError("The time needs a zone (Z or +hh:mm).")
        if not 2000 <= at.year <= 9999:
            raise ValidationError("A year between 2000 and 9999.")
        return at


class ListQuery(QuerySchema):
    limit = limit_field()
    requests = fields.String(
        validate=validate.OneOf(["only", "exclude"]),
        metadata={"description": "Only message requests, or none; default both."},
    )
    archived = fields.Boolean(
        load_default=False,
        metadata={"description": "true: only archived conversations."},
    )
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
    request = fields.Boolean(
        metadata={"description": "For the caller: a message request not accepted."}
    )
    muted_until = MutedUntilField(allow_none=True)
    archived = fields.Boolean()


class MemberSettingsIn(StrictSchema):
    """PATCH /v1/conversations/{id}/me: one or both."""

    muted_until = MutedUntilField(allow_none=True)
    archived = JsonBoolean()

    @validates_schema
    def _something(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("Give muted_until, archived or both.", "_schema")
