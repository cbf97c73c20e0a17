"""Who shares a conversation with whom: the user's list (user's shard), then the
members of those conversations (their shards, one round trip per database)."""

from __future__ import annotations

from messenger.storage.pools import ShardCursor

_CONVERSATION_IDS = """
SELECT conversation_id FROM {s}.user_conversations WHERE user_id = %s
"""

_MEMBERS = """
SELECT user_id FROM {s}.members WHERE conversation_id = ANY(%(c)s)
"""
_MEMBERS_AMONG = """
SELECT user_id FROM {s}.members
WHERE conversation_id = ANY(%(c)s) AND user_id = ANY(%(among)s)
"""


def conversation_ids(cur: ShardCursor, user_id: int) -> list[int]:
    """The conversations in the user's list."""
    return [r[0] for r in cur.run(_CONVERSATION_IDS, (user_id,)).fetchall()]


def members_across(
    cur: ShardCursor,
    ids_by_schema: dict[str, list[int]],
    among: list[int] | None = None,
) -> set[int]:
    """Members of the given conversations of several shard schemas of one
    database (optionally only those among some user ids), in one round trip."""
    sql = _MEMBERS if among is None else _MEMBERS_AMONG
    parts = [
        cur.mogrify(sql.format(s=schema), {"c": ids, "among": among}).strip()
        for schema, ids in sorted(ids_by_schema.items())
    ]
    if not parts:
        return set()
    cur.execute(b" UNION ".join(b"(" + p + b")" for p in parts))
    return {r[0] for r in cur.fetchall()}
