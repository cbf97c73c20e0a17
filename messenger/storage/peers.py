"""Who sees whose presence (API.md): the conversations in which a user is not a
request (user's shard), the members of those conversations (their shards, one
round trip per database), and, the other way, which asked users hold a
non-request list row for one of the caller's conversations (their shards)."""

from __future__ import annotations

from messenger.storage.pools import ShardCursor

_CONVERSATION_IDS = """
SELECT conversation_id FROM {s}.user_conversations WHERE user_id = %s
"""

_VISIBLE_CONVERSATION_IDS = """
SELECT conversation_id FROM {s}.user_conversations WHERE user_id = %s AND NOT request
"""

_SHOWN_AMONG = """
SELECT DISTINCT user_id FROM {s}.user_conversations
WHERE user_id = ANY(%(u)s) AND conversation_id = ANY(%(c)s) AND NOT request
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


def visible_conversation_ids(cur: ShardCursor, user_id: int) -> list[int]:
    """The conversations in which the user is not a request: those through which
    the other members see its presence."""
    return [r[0] for r in cur.run(_VISIBLE_CONVERSATION_IDS, (user_id,)).fetchall()]


def shown_across(
    cur: ShardCursor, users_by_schema: dict[str, list[int]], conversation_ids: list[int]
) -> set[int]:
    """Of the given users (several shard schemas of one database), those that are
    members of one of conversation_ids without being a request there; one round
    trip."""
    parts = [
        cur.mogrify(
            _SHOWN_AMONG.format(s=schema), {"u": users, "c": conversation_ids}
        ).strip()
        for schema, users in sorted(users_by_schema.items())
    ]
    if not parts:
        return set()
    cur.execute(b" UNION ".join(b"(" + p + b")" for p in parts))
    return {r[0] for r in cur.fetchall()}


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
