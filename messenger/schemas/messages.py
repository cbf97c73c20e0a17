"""Messages, history pages, receipts."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from messenger.schemas.base import (
    BIGINT_MAX,
    CLIENT_MSG_ID,
    ID_RANGE,
    CompleteOut,
    Id,
    QuerySchema,
    StrictInteger,
    StrictSchema,
    UtcTime,
    limit_field,
)
from messenger.services.attachments import ATTACHMENTS_PER_MESSAGE_MAX

EMOJI_MAX_CODE_POINTS = 16


class AttachmentOut(CompleteOut):
    """An Attachment; views.attachment_json writes the same for the hot paths."""

    id = fields.Integer(attribute="attachment_id")
    content_type = fields.String()
    size = fields.Integer()
    filename = fields.String()
    sha256 = fields.String()
    width = fields.Integer(allow_none=True)
    height = fields.Integer(allow_none=True)
    created_at = UtcTime()


ATTACHMENT_IDS = validate.Length(max=ATTACHMENTS_PER_MESSAGE_MAX)
# A body may be "" where attachments carry the message (API.md).
BODY_OR_EMPTY = validate.Length(min=0, max=4000)


class SendMessageIn(StrictSchema):
    client_msg_id = fields.String(required=True, validate=CLIENT_MSG_ID)
    body = fields.String(
        load_default="",
        validate=BODY_OR_EMPTY,
        metadata={
            "description": "Required (1–4000 characters) unless "
            'attachment_ids is non-empty; then it may be "" or left out.'
        },
    )
    reply_to = Id(
        allow_none=True,
        load_default=None,
        metadata={"description": "A seq of this conversation, 1..last_seq."},
    )
    attachment_ids = fields.List(
        Id(),
        load_default=list,
        validate=ATTACHMENT_IDS,
        metadata={"description": "Attachments uploaded by the sender, at most 10."},
    )

    @validates_schema
    def _body_or_attachments(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("body") and not data.get("attachment_ids"):
            raise ValidationError(
                "Required: 1 to 4000 characters, unless attachments are sent.", "body"
            )
        ids = data.get("attachment_ids") or []
        if len(set(ids)) != len(ids):
            raise ValidationError("An attachment is named twice.", "attachment_ids")


class EditMessageIn(StrictSchema):
    body = fields.String(
        required=True,
        validate=BODY_OR_EMPTY,
        metadata={"description": '"" only on a message with attachments.'},
    )


# 1–16 code points, none of them whitespace (Python's \s is Unicode's; \ufeff is
# whitespace to JSON Schema's ECMAScript patterns) or a control character.
EMOJI = validate.Regexp(
    rf"^[^\s\ufeff\x00-\x1f\x7f-\x9f]{{1,{EMOJI_MAX_CODE_POINTS}}}\Z",
    error=f"1 to {EMOJI_MAX_CODE_POINTS} Unicode code points, no whitespace or "
    "control characters.",
)


class ReactionIn(StrictSchema):
    emoji = fields.String(required=True, validate=EMOJI)


class HistoryQuery(QuerySchema):
    before = fields.Integer(validate=ID_RANGE)
    after = fields.Integer(validate=validate.Range(min=0, max=BIGINT_MAX))
    limit = limit_field()

    @validates_schema
    def _one_direction(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "before" in data and "after" in data:
            raise ValidationError("Use before or after, not both.", "before")


class ReceiptIn(StrictSchema):
    type = fields.String(required=True, validate=validate.OneOf(["delivered", "read"]))
    seq = StrictInteger(required=True, validate=validate.Range(min=0, max=BIGINT_MAX))


class MessageOut(CompleteOut):
    """A Message; views.message_json writes the same for the hot paths."""

    conversation_id = fields.Integer()
    seq = fields.Integer()
    sender_id = fields.Integer()
    client_msg_id = fields.String()
    body = fields.String()
    created_at = UtcTime()
    reply_to = fields.Integer(allow_none=True)
    edited_at = UtcTime(allow_none=True)
    deleted = fields.Boolean()
    reactions = fields.Dict(
        keys=fields.String(),
        values=fields.List(fields.Integer()),
        metadata={"description": "emoji → ids of the members who reacted, ascending"},
    )
    attachments = fields.List(fields.Nested(AttachmentOut))
