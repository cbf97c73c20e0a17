"""Request helpers shared by the routes."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from messenger.errors import BadRequest, NotFound
from messenger.schemas.base import BIGINT_MAX

# Deeper JSON than this is hostile or broken; refusing it early bounds recursion.
JSON_MAX_DEPTH = 32


def request_json() -> Any:
    """The JSON body; 400 bad_request for a wrong content type or malformed JSON."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    ):
        raise BadRequest("Send the body as JSON with Content-Type: application/json.")
    raw = request.get_data(cache=False)
    if _too_deep(raw):
        raise BadRequest(f"The JSON body is nested deeper than {JSON_MAX_DEPTH}.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("The body is not valid JSON.") from None


def _too_deep(raw: bytes) -> bool:
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > JSON_MAX_DEPTH:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def path_id(value: int) -> int:
    """Path ids beyond a bigint can't exist: 404 like any unknown id."""
    if not 1 <= value <= BIGINT_MAX:
        raise NotFound("No such resource.")
    return value
