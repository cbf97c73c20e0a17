"""Users and sessions."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from messenger.schemas.base import (
    DISPLAY_NAME,
    HANDLE,
    PASSWORD,
    CompleteOut,
    QuerySchema,
    StrictSchema,
    UtcTime,
    limit_field,
)

# API.md: people search takes a prefix of 1 to 32 characters and answers at most
# 50 users (20 unless asked).
SEARCH_QUERY = validate.Length(min=1, max=32)
SEARCH_LIMIT_DEFAULT = 20
SEARCH_LIMIT_MAX = 50


class RegisterIn(StrictSchema):
    handle = fields.String(required=True, validate=HANDLE)
    password = fields.String(required=True, validate=PASSWORD)
    display_name = fields.String(validate=DISPLAY_NAME)


class LoginIn(StrictSchema):
    # Not validated against the registration rules: any wrong input is just a 401.
    handle = fields.String(required=True)
    password = fields.String(required=True)


class HandleQuery(QuerySchema):
    """GET /v1/users: `handle` (one user) or `q` (people search), not both."""

    handle = fields.String(validate=HANDLE)
    q = fields.String(
        validate=SEARCH_QUERY,
        metadata={"description": "A prefix of handles or display names."},
    )
    limit = limit_field(SEARCH_LIMIT_DEFAULT, SEARCH_LIMIT_MAX)

    @validates_schema
    def _one_of(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("handle" in data) == ("q" in data):
            raise ValidationError("Give either handle or q.", "q")


class ProfileIn(StrictSchema):
    display_name = fields.String(required=True, validate=DISPLAY_NAME)


class PasswordIn(StrictSchema):
    # Not checked against the rules: a wrong current password is just a 403.
    current_password = fields.String(required=True, validate=validate.Length(max=1024))
    new_password = fields.String(required=True, validate=PASSWORD)


class SessionInfoOut(CompleteOut):
    id = fields.Integer(attribute="session_id")
    created_at = UtcTime()
    last_used_at = UtcTime()
    user_agent = fields.String()
    current = fields.Boolean(attribute="is_current")


class UserOut(CompleteOut):
    id = fields.Integer(attribute="user_id")
    handle = fields.String()
    display_name = fields.String()
    created_at = UtcTime()
