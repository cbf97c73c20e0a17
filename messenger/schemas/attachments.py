"""The upload's query string."""

from __future__ import annotations

from marshmallow import fields, validate

from messenger.schemas.base import QuerySchema
from messenger.services.attachments import DEFAULT_FILENAME, FILENAME_MAX_CHARS

FILENAME = validate.Regexp(
    rf"^[^/\x00-\x1f\x7f-\x9f]{{1,{FILENAME_MAX_CHARS}}}\Z",
    error=f"1 to {FILENAME_MAX_CHARS} characters, no / or control characters.",
)


class UploadQuery(QuerySchema):
    filename = fields.String(
        load_default=DEFAULT_FILENAME,
        validate=FILENAME,
        metadata={"description": 'The file\'s name (default "file").'},
    )
