"""Blocks, stored on the shard of each of the two users (one row when they share
a shard): whom a user blocked, and who blocked a user, each read locally."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from messenger.storage.pools import ShardCursor

_INSERT = """
INSERT INTO {s}.blocks (blocker_id, blocked_id) VALUES (%s, %s) ON CONFLICT DO NOTHING
"""
_DELETE = "DELETE FROM {s}.blocks WHERE blocker_id = %s AND blocked_id = %s"
_BLOCKED_BY_ME = """
SELECT blocked_id, created_at FROM {s}.blocks WHERE blocker_id = %s
ORDER BY created_at DESC, blocked_id
"""
_BLOCKERS_OF = "SELECT blocker_id FROM {s}.blocks WHERE blocked_id = %s"
_BLOCKERS_AMONG = """
SELECT blocker_id FROM {s}.blocks WHERE blocked_id = %s AND blocker_id = ANY(%s)
"""
_BLOCKED_AMONG = """
SELECT blocked_id FROM {s}.blocks WHERE blocker_id = %s AND blocked_id = ANY(%s)
"""


def insert(cur: ShardCursor, blocker_id: int, blocked_id: int) -> None:
    cur.run(_INSERT, (blocker_id, blocked_id))


def delete(cur: ShardCursor, blocker_id: int, blocked_id: int) -> None:
    cur.run(_DELETE, (blocker_id, blocked_id))


def blocked_by(cur: ShardCursor, blocker_id: int) -> list[tuple[int, datetime]]:
    """Whom blocker_id blocked, newest first (blocker's shard)."""
    return [(int(r[0]), r[1]) for r in cur.run(_BLOCKED_BY_ME, (blocker_id,))]


def blockers_of(cur: ShardCursor, user_id: int) -> set[int]:
    """Who blocked user_id (user_id's shard)."""
    return {int(r[0]) for r in cur.run(_BLOCKERS_OF, (user_id,))}


def blockers_among(cur: ShardCursor, user_id: int, among: Sequence[int]) -> set[int]:
    """Those of `among` who blocked user_id (user_id's shard)."""
    return {int(r[0]) for r in cur.run(_BLOCKERS_AMONG, (user_id, list(among)))}


def blocked_among(cur: ShardCursor, blocker_id: int, among: Sequence[int]) -> set[int]:
    """Those of `among` whom blocker_id blocked (blocker's shard)."""
    return {int(r[0]) for r in cur.run(_BLOCKED_AMONG, (blocker_id, list(among)))}


_PAIRS = """
SELECT blocker_id, blocked_id FROM {s}.blocks
WHERE blocker_id = ANY(%s) AND blocked_id = ANY(%s)
"""


def pairs_among(
    cur: ShardCursor, blocker_ids: Sequence[int], blocked_ids: Sequence[int]
) -> set[tuple[int, int]]:
    """(blocker, blocked) pairs between the two groups (blockers' shard)."""
    rows = cur.run(_PAIRS, (list(blocker_ids), list(blocked_ids)))
    return {(int(r[0]), int(r[1])) for r in rows}
