"""Opaque page cursors of a time and ids: "<unix microseconds>.<id>.<id>…".

Used where pages are ordered newest first by a timestamp with ids as tie-breakers
(the conversation list, search results).
"""

from __future__ import annotations

from datetime import UTC, datetime

from messenger.errors import ValidationFailed


def encode(at: datetime, *ids: int) -> str:
    micros = int(at.timestamp()) * 1_000_000 + at.microsecond
    return ".".join(str(part) for part in (micros, *ids))


def decode(cursor: str, id_count: int) -> tuple[datetime, list[int]]:
    """The time and the ids of a cursor made by encode().

    Raises:
        ValidationFailed: on the `before` field, for anything encode() did not make.
    """
    try:
        micros, *ids = (int(part) for part in cursor.split("."))
        if len(ids) != id_count:
            raise ValueError(cursor)
        at = datetime.fromtimestamp(micros // 1_000_000, UTC).replace(
            microsecond=micros % 1_000_000
        )
    except (ValueError, OverflowError, OSError):
        raise ValidationFailed(
            "The request is not valid.",
            fields={"before": ["A cursor returned as next by an earlier page."]},
        ) from None
    return at, ids
