"""Schemas that only document: response envelopes, the error shape of API.md,
and request variants a single loading schema can't express.

The routes build their answers directly (hot paths avoid marshmallow); these
schemas say what they build, and the fuzz test checks every answer against them.
When a route gains a response field, add it here too.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from messenger.schemas.base import TITLE, Id, StrictSchema
from messenger.schemas.conversations import ConversationOut, MutedUntilField
from messenger.schemas.devices import DeviceOut, RegisteredDeviceOut
from messenger.schemas.messages import AttachmentOut, MessageOut
from messenger.schemas.users import SessionInfoOut, UserOut
from messenger.services.conversations import GROUP_MAX_MEMBERS

ERROR_CODES = (
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "cursor_expired",
    "payload_too_large",
    "range_not_satisfiable",
    "validation_failed",
    "rate_limited",
    "unavailable",
    "internal",
)

EVENT_TYPES = (
    "message",
    "message_updated",
    "receipt",
    "member_added",
    "member_removed",
    "conversation_updated",
    "conversation_deleted",
    "typing",
    "presence",
    "member_settings",
)


class DirectConversationIn(StrictSchema):
    """POST /v1/conversations, kind direct (CreateConversationIn loads both)."""

    kind = fields.String(required=True, validate=validate.OneOf(["direct"]))
    user_id = Id(required=True)


class GroupConversationIn(StrictSchema):
    """POST /v1/conversations, kind group."""

    kind = fields.String(required=True, validate=validate.OneOf(["group"]))
    title = fields.String(required=True, validate=TITLE)
    member_ids = fields.List(Id(), validate=validate.Length(max=GROUP_MAX_MEMBERS))


class ErrorBody(Schema):
    code = fields.String(required=True, validate=validate.OneOf(ERROR_CODES))
    message = fields.String(required=True)
    # Named "fields" on the wire; the attribute can't be (Schema.fields).
    field_errors = fields.Dict(
        data_key="fields",
        keys=fields.String(),
        metadata={"description": "Validation errors by field (422 only)."},
    )


class ErrorOut(Schema):
    error = fields.Nested(ErrorBody, required=True)


class UserEnvelope(Schema):
    user = fields.Nested(UserOut, required=True)


class UserList(Schema):
    users = fields.List(fields.Nested(UserOut), required=True)


class SessionList(Schema):
    sessions = fields.List(fields.Nested(SessionInfoOut), required=True)


class SessionOut(Schema):
    token = fields.String(required=True)
    user = fields.Nested(UserOut, required=True)


class ConversationEnvelope(Schema):
    conversation = fields.Nested(ConversationOut, required=True)


class ConversationPage(Schema):
    conversations = fields.List(fields.Nested(ConversationOut), required=True)
    next = fields.String(required=True, allow_none=True)


class MessageEnvelope(Schema):
    message = fields.Nested(MessageOut, required=True)


class AttachmentEnvelope(Schema):
    attachment = fields.Nested(AttachmentOut, required=True)


class MessagePage(Schema):
    messages = fields.List(fields.Nested(MessageOut), required=True)
    next_before = fields.Integer(required=True, allow_none=True)
    next_after = fields.Integer(required=True, allow_none=True)


class SearchPage(Schema):
    messages = fields.List(fields.Nested(MessageOut), required=True)
    next = fields.String(required=True, allow_none=True)


class EventConversationOut(ConversationOut):
    """A Conversation in a `conversation_updated` event: a rename carries only
    what changed, so `members` (unchanged, up to 500) may be left out."""

    def on_bind_field(self, field_name: str, field_obj: fields.Field) -> None:
        field_obj.required = field_name != "members"


class EventOut(Schema):
    """One event: `type` plus the fields of that type at the top level."""

    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    id = fields.Integer(metadata={"description": "Stored events only."})
    message = fields.Nested(MessageOut)
    conversation = fields.Nested(EventConversationOut)
    conversation_id = fields.Integer()
    user_id = fields.Integer()
    by = fields.Integer()
    receipt = fields.String(validate=validate.OneOf(["delivered", "read"]))
    seq = fields.Integer()
    status = fields.String(validate=validate.OneOf(["online", "offline"]))
    last_seen = fields.String(allow_none=True)
    muted_until = MutedUntilField(allow_none=True)
    archived = fields.Boolean()


class EventsPage(Schema):
    events = fields.List(fields.Nested(EventOut), required=True)
    cursor = fields.String(required=True)
    more = fields.Boolean(required=True)


class PresenceOut(Schema):
    status = fields.String(
        required=True, validate=validate.OneOf(["online", "offline"])
    )
    last_seen = fields.String(required=True, allow_none=True)


class PresenceMap(Schema):
    presence = fields.Dict(
        keys=fields.String(), values=fields.Nested(PresenceOut), required=True
    )


class DeviceEnvelope(Schema):
    device = fields.Nested(RegisteredDeviceOut, required=True)


class DeviceList(Schema):
    devices = fields.List(fields.Nested(DeviceOut), required=True)


class HealthOut(Schema):
    status = fields.String(required=True)


class DatabaseReadyOut(Schema):
    database = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(("up", "down")))
    directory = fields.Boolean(required=True)
    shards = fields.Integer(required=True)


class ReadyOut(Schema):
    # "ok": everything answers; "degraded": this host serves, but a shard
    # database is down (its users get 503s); "unavailable": it cannot serve.
    status = fields.String(
        required=True, validate=validate.OneOf(("ok", "degraded", "unavailable"))
    )
    node = fields.String()
    redis = fields.String(validate=validate.OneOf(("up", "down")))
    databases = fields.List(fields.Nested(DatabaseReadyOut))
    down = fields.List(fields.String())
    error = fields.Nested(ErrorBody)
