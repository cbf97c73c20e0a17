"""GET /v1/search: the query."""

from __future__ import annotations

from marshmallow import fields, validate

from messenger.schemas.base import QuerySchema, limit_field

SEARCH_QUERY_MAX = 200


class SearchQuery(QuerySchema):
    q = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=SEARCH_QUERY_MAX),
            # Anywhere in q (re.match anchors at the start; `.` stops at a
            # newline). The BOM counts as space, as in JSON Schema's \s.
            validate.Regexp(r"(?s).*[^\s\ufeff]", error="Give at least one word."),
        ],
        metadata={"description": 'Words, "phrases", or, -word (web search style).'},
    )
    limit = limit_field()
    before = fields.String(validate=validate.Length(min=1, max=64))
