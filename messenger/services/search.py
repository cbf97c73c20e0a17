"""Full-text search over the caller's conversations, from the caller's shard.

The mailbox holds the caller's own copy of every message of its conversations
(from when it joined), so a search reads one shard and can never see another
user's conversation. English stemming: "running" finds "run" and "runs".
Queries use web-search syntax: words (all must match), "quoted phrases", `or`,
and -excluded words.
"""

from __future__ import annotations

from datetime import UTC, datetime

from messenger import runtime
from messenger.errors import ValidationFailed
from messenger.models import Message
from messenger.storage import search as store


def encode_cursor(message: Message) -> str:
    at = message.created_at
    micros = int(at.timestamp()) * 1_000_000 + at.microsecond
    return f"{micros}.{message.conversation_id}.{message.seq}"


def decode_cursor(cursor: str) -> store.Position:
    try:
        micros_s, conv_s, seq_s = cursor.split(".")
        micros, conversation_id, seq = int(micros_s), int(conv_s), int(seq_s)
        at = datetime.fromtimestamp(micros // 1_000_000, UTC).replace(
            microsecond=micros % 1_000_000
        )
    except (ValueError, OverflowError, OSError):
        raise ValidationFailed(
            "The request is not valid.",
            fields={"before": ["A cursor returned as next by an earlier page."]},
        ) from None
    return at, conversation_id, seq


def search(
    user_id: int, query: str, *, limit: int, before: str | None = None
) -> tuple[list[Message], str | None]:
    """A page of the caller's matching messages, newest first, and the next cursor.

    Raises:
        ValidationFailed: a cursor that no earlier page returned.
    """
    position = decode_cursor(before) if before else None
    with runtime.get().router.on_user(user_id, "search", transaction=False) as cur:
        found = store.search(cur, user_id, query, limit + 1, position)
    if len(found) > limit:
        return found[:limit], encode_cursor(found[limit - 1])
    return found, None
