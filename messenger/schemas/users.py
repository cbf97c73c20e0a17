"""Users and sessions."""

from __future__ import annotations

from marshmallow import fields

from messenger.schemas.base import (
    DISPLAY_NAME,
    HANDLE,
    PASSWORD,
    CompleteOut,
    QuerySchema,
    StrictSchema,
    UtcTime,
)


class RegisterIn(StrictSchema):
    handle = fields.String(required=True, validate=HANDLE)
    password = fields.String(required=True, validate=PASSWORD)
    display_name = fields.String(validate=DISPLAY_NAME)


class LoginIn(StrictSchema):
    # Not validated against the registration rules: any wrong input is just a 401.
    handle = fields.String(required=True)
    password = fields.String(required=True)


class HandleQuery(QuerySchema):
    handle = fields.String(required=True, validate=HANDLE)


class UserOut(CompleteOut):
    id = fields.Integer(attribute="user_id")
    handle = fields.String()
    display_name = fields.String()
    created_at = UtcTime()
