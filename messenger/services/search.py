"""Full-text search over the caller's conversations, from the caller's shard.

The mailbox holds the caller's own copy of every message of its conversations
(from when it joined), so a search reads one shard and can never see another
user's conversation. English stemming: "running" finds "run" and "runs".
Queries use web-search syntax: words (all must match), "quoted phrases", `or`,
and -excluded words.
"""

from __future__ import annotations

from messenger import runtime
from messenger.errors import ValidationFailed
from messenger.models import Message
from messenger.services import cursors
from messenger.storage import search as store


def encode_cursor(message: Message) -> str:
    return cursors.encode(message.created_at, message.conversation_id, message.seq)


def decode_cursor(cursor: str) -> store.Position:
    at, (conversation_id, seq) = cursors.decode(cursor, 2)
    return at, conversation_id, seq


def search(
    user_id: int, query: str, *, limit: int, before: str | None = None
) -> tuple[list[Message], str | None]:
    """A page of the caller's matching messages, newest first, and the next cursor.

    A search's cost is bounded: it runs under its own statement timeout
    (MESSENGER_SEARCH_TIMEOUT_MS) against stored tsvectors, and the API limits
    searches per user (the `search` rate limit).

    Raises:
        ValidationFailed: a cursor that no earlier page returned, or a query that
            ran past the search timeout (too broad: `-word` alone matches
            nearly everything).
    """
    rt = runtime.get()
    position = decode_cursor(before) if before else None
    try:
        with rt.router.on_user(user_id, "search") as cur:
            found = store.search(
                cur,
                user_id,
                query,
                limit + 1,
                position,
                timeout_ms=rt.settings.search_timeout_ms,
            )
    except store.SearchTooCostly:
        raise ValidationFailed(
            "The search took too long.",
            fields={"q": ["Too broad to search: add words to find."]},
        ) from None
    if len(found) > limit:
        return found[:limit], encode_cursor(found[limit - 1])
    return found, None
