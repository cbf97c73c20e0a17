"""GET /v1/search: the query."""

from __future__ import annotations

from marshmallow import fields, validate

from messenger.schemas.base import Contains, QuerySchema, limit_field
from messenger.services import cursors

SEARCH_QUERY_MAX = 200
# A character that is not space, written out so that Python, ECMA and Rust
# regexes agree on it: Python's \s also covers \x1c-\x1f and \x85, ECMA's also
# covers the BOM (\ufeff). A query needs one somewhere.
WORD_CHARACTER = r"[^\s\x1c-\x1f\x85\ufeff]"


class SearchQuery(QuerySchema):
    q = fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=SEARCH_QUERY_MAX),
            Contains(WORD_CHARACTER, error="Give at least one word."),
        ],
        metadata={"description": 'Words, "phrases", or, -word (web search style).'},
    )
    limit = limit_field()
    # "<microseconds>.<conversation id>.<seq>", as services.search encodes it.
    before = fields.String(
        validate=validate.Regexp(cursors.pattern(2), error=cursors.INVALID)
    )
