"""Full-text search over a user's mailbox (user's shard)."""

from __future__ import annotations

from datetime import datetime

import psycopg2.errors

from messenger.models import Message
from messenger.storage.messages import message_columns, message_from_row
from messenger.storage.pools import ShardCursor

# `mb.body_tsv` is the stored tsvector of the mailbox_search index
# (sql/shard/0010_search_tsvector.sql). Only conversations still in
# the user's list count: a removed member keeps nothing searchable. Newest
# first, with (created_at, conversation_id, seq) as the page position.
_SEARCH = f"""
SELECT mb.conversation_id, {message_columns("mb")}
FROM {{s}}.mailbox mb
JOIN {{s}}.user_conversations uc
  ON uc.user_id = mb.user_id AND uc.conversation_id = mb.conversation_id
WHERE mb.user_id = %(u)s AND NOT mb.deleted
  AND mb.body_tsv @@ websearch_to_tsquery('english', %(q)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (mb.created_at, mb.conversation_id, mb.seq)
          < (%(before_at)s, %(before_c)s, %(before_seq)s))
ORDER BY mb.created_at DESC, mb.conversation_id DESC, mb.seq DESC
LIMIT %(limit)s
"""

# Runs in the search's own transaction: a search may take this long, not the
# connection's general statement timeout.
_BOUND = "SET LOCAL statement_timeout = %s"

Position = tuple[datetime, int, int]


class SearchTooCostly(Exception):
    """The search ran past its statement timeout."""


def search(
    cur: ShardCursor,
    user_id: int,
    query: str,
    limit: int,
    before: Position | None = None,
    *,
    timeout_ms: int,
) -> list[Message]:
    """The user's messages matching a web-search style query, newest first.

    Call in a transaction (the timeout is set for it alone).

    Raises:
        SearchTooCostly: the search took longer than timeout_ms.
    """
    before_at, before_c, before_seq = before if before else (None, None, None)
    cur.run(_BOUND, (int(timeout_ms),))
    try:
        rows = cur.run(
            _SEARCH,
            {
                "u": user_id,
                "q": query,
                "limit": limit,
                "before_at": before_at,
                "before_c": before_c,
                "before_seq": before_seq,
            },
        ).fetchall()
    except psycopg2.errors.QueryCanceled:
        raise SearchTooCostly from None
    return [message_from_row(row[0], row[1:]) for row in rows]
