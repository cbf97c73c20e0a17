"""The strict base schemas, UTC times, and the limits of API.md.

The OpenAPI document is made from these schemas (api/openapi.py, through
apispec): a bound, an enum or a pattern is written once, as a validator (or,
for a field that parses by hand, as its `pattern` metadata), and the document
publishes what the validator enforces.
"""

from __future__ import annotations

import re
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
    """Validate with a schema; a failure becomes 422 validation_failed.

    Every string, in any field (and any key), first passes `unstorable_reason`:
    a value PostgreSQL text can't hold is a 422 naming the field, not a 500
    where it is stored.
    """
    bad = _unstorable_fields(data)
    if bad:
        raise ValidationFailed("The request is not valid.", fields=bad)
    try:
        return schema.load(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        messages = exc.messages
        if not isinstance(messages, dict):
            messages = {"_schema": messages}
        raise ValidationFailed("The request is not valid.", fields=messages) from None


# A lone UTF-16 surrogate (JSON "\ud800" without its pair) is a str in Python
# but has no UTF-8 form, so psycopg2 (and the JSON encoder's output) can't carry it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable_reason(value: str) -> str | None:
    """Why a string can't be stored as text, or None: the rule every string
    field of every request gets (new text fields get it through `load`)."""
    if "\x00" in value:
        # PostgreSQL text can't hold NUL: refuse it here, not with a 500 there.
        return "Contains a NUL character."
    if _SURROGATE.search(value):
        return "Contains a lone surrogate (not a Unicode character)."
    return None


def _unstorable_fields(data: Any) -> dict[str, list[str]]:
    """Top-level names whose value (or name) holds an unstorable string anywhere."""
    if not isinstance(data, Mapping):
        reason = _unstorable(data)
        return {"_schema": [reason]} if reason else {}
    items = data.items(multi=True) if isinstance(data, MultiDict) else data.items()
    found: dict[str, list[str]] = {}
    for key, value in items:
        reason = _unstorable(key) or _unstorable(value)
        if reason:
            name = str(key)
            if _SURROGATE.search(name):
                name = name.encode("utf-8", "backslashreplace").decode("ascii")
            found.setdefault(name, [reason])
    return dict(sorted(found.items()))


def _unstorable(value: Any) -> str | None:
    if isinstance(value, str):
        return unstorable_reason(value)
    if isinstance(value, Mapping):
        for k, v in value.items():
            reason = _unstorable(k) or _unstorable(v)
            if reason:
                return reason
    if isinstance(value, list):
        for v in value:
            reason = _unstorable(v)
            if reason:
                return reason
    return None


def limit_field(
    default: int = PAGE_LIMIT_DEFAULT, maximum: int = PAGE_LIMIT_MAX
) -> fields.Integer:
    return fields.Integer(
        load_default=default, validate=validate.Range(min=1, max=maximum)
    )
