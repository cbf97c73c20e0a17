"""Opaque page cursors of a time and ids: "<unix microseconds>.<id>.<id>…".

Used where pages are ordered newest first by a timestamp with ids as tie-breakers
(the conversation list, search results). pattern() is the one description of
what a cursor looks like: decode() checks it, and the query schemas validate and
publish it.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta

from messenger.errors import ValidationFailed

# 17 digits of microseconds reach the year 5138; 18 digits of an id stay below
# 2**63, so every part fits what encode() wrote and PostgreSQL can compare.
_MICROS = r"[0-9]{1,17}"
_ID = r"\.[0-9]{1,18}"
INVALID = "A cursor returned as next by an earlier page."
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@functools.cache
def pattern(id_count: int) -> str:
    """The regular expression (Python syntax, anchored with \\Z) of a cursor with
    id_count ids."""
    return "^" + _MICROS + _ID * id_count + r"\Z"


def encode(at: datetime, *ids: int) -> str:
    # Exact: at.timestamp() is a float, which rounds far-off times.
    micros = (at.astimezone(UTC) - _EPOCH) // _MICROSECOND
    return ".".join(str(part) for part in (micros, *ids))


def decode(cursor: str, id_count: int) -> tuple[datetime, list[int]]:
    """The time and the ids of a cursor made by encode().

    Raises:
        ValidationFailed: on the `before` field, for anything encode() did not make.
    """
    try:
        if not re.match(pattern(id_count), cursor):
            raise ValueError(cursor)
        micros, *ids = (int(part) for part in cursor.split("."))
        at = datetime.fromtimestamp(micros // 1_000_000, UTC).replace(
            microsecond=micros % 1_000_000
        )
    except (ValueError, OverflowError, OSError):
        raise ValidationFailed(
            "The request is not valid.", fields={"before": [INVALID]}
        ) from None
    return at, ids
