"""Messages, history pages, receipts."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from messenger.schemas.base import (
    BIGINT_MAX,
    BODY,
    CLIENT_MSG_ID,
    ID_RANGE,
    CompleteOut,
    QuerySchema,
    StrictInteger,
    StrictSchema,
    UtcTime,
    limit_field,
)


class SendMessageIn(StrictSchema):
    client_msg_id = fields.String(required=True, validate=CLIENT_MSG_ID)
    body = fields.String(required=True, validate=BODY)


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
