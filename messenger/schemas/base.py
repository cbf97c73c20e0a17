"""The strict base schemas, UTC times, and the limits of API.md.

The OpenAPI document is made from these schemas (api/openapi.py, through
apispec): a bound, an enum or a pattern is written once, as a validator (or,
for a field that parses by hand, as its `pattern` metadata), and the document
publishes what the validator enforces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate
from werkzeug.datastructures import MultiDict

from messenger.errors import ValidationFailed
from messenger.views import format_time

HANDLE = validate.Regexp(
    r"^[a-z0-9_]{3,32}\Z", error="3 to 32 characters of a-z, 0-9 and _."
)
PASSWORD = validate.Length(min=8, max=128)
DISPLAY_NAME = validate.Length(min=1, max=64)
TITLE = validate.Length(min=1, max=100)
BODY = validate.Length(min=1, max=4000)
CLIENT_MSG_ID = validate.Regexp(
    r"^[A-Za-z0-9_-]{1,64}\Z", error="1 to 64 characters of A-Z, a-z, 0-9, _ and -."
)
PAGE_LIMIT_DEFAULT = 50
PAGE_LIMIT_MAX = 200
# Ids and seqs are PostgreSQL bigints.
BIGINT_MAX = 2**63 - 1
ID_RANGE = validate.Range(min=1, max=BIGINT_MAX)


class UtcTime(fields.Field):
    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return None if value is None else format_time(value)


class StrictInteger(fields.Integer):
    """A JSON integer: strings, fractions and booleans are refused.

    5.0 is the integer 5, as JSON Schema (and so the OpenAPI document) sees it;
    clients whose JSON encoder writes integral numbers that way are not wrong.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> Any:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, float) and value.is_integer() and abs(value) <= BIGINT_MAX:
            value = int(value)
        return super()._deserialize(value, attr, data, **kwargs)


class Id(StrictInteger):
    """A positive bigint id."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("validate", ID_RANGE)
        super().__init__(**kwargs)


class Contains(validate.Regexp):
    """Valid when the regex matches anywhere in the value (JSON Schema's
    unanchored `pattern`), not only at its start as validate.Regexp does."""

    def __call__(self, value: Any) -> Any:
        if self.regex.search(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class CompleteOut(Schema):
    """An answer whose every field is always present (null where allowed): the
    document marks them all required."""

    def on_bind_field(self, field_name: str, field_obj: fields.Field) -> None:
        field_obj.required = True


class StrictSchema(Schema):
    """Request bodies: unknown fields are a 422, not silently dropped."""

    class Meta:
        unknown = RAISE


class QuerySchema(Schema):
    """Query strings: unknown parameters (cache busters from old proxies) ignored."""

    class Meta:
        unknown = EXCLUDE


def load(schema: Schema, data: Any) -> dict[str, Any]:
    """Validate with a schema; a failure becomes 422 validation_failed."""
    with_nul = _fields_with_nul(data)
    if with_nul:
        # PostgreSQL text can't hold NUL: refuse it here, not with a 500 there.
        raise ValidationFailed(
            "The request is not valid.",
            fields={name: ["Contains a NUL character."] for name in with_nul},
        )
    try:
        return schema.load(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        messages = exc.messages
        if not isinstance(messages, dict):
            messages = {"_schema": messages}
        raise ValidationFailed("The request is not valid.", fields=messages) from None


def _fields_with_nul(data: Any) -> list[str]:
    """Top-level names whose value holds a NUL character anywhere inside."""
    if not isinstance(data, Mapping):
        return ["_schema"] if _has_nul(data) else []
    items = data.items(multi=True) if isinstance(data, MultiDict) else data.items()
    return sorted({str(k) for k, v in items if _has_nul(k) or _has_nul(v)})


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def limit_field(
    default: int = PAGE_LIMIT_DEFAULT, maximum: int = PAGE_LIMIT_MAX
) -> fields.Integer:
    return fields.Integer(
        load_default=default, validate=validate.Range(min=1, max=maximum)
    )
