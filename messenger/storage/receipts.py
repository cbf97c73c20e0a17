"""Delivered and read positions of members (conversation's shard)."""

from __future__ import annotations

from dataclasses import dataclass

from messenger.storage.pools import ShardCursor

# One statement: lock the member's row (a concurrent receipt of the same member
# waits here and then sees the newer positions), move the positions forward
# only, and report the old ones with the conversation's last_seq and members.
# Read implies delivered. A seq beyond last_seq changes nothing (the caller
# rejects it).
_ADVANCE = """
WITH pos AS (
    SELECT m.read_seq, m.delivered_seq, c.last_seq
    FROM {s}.members m
    JOIN {s}.conversations c ON c.conversation_id = m.conversation_id
    WHERE m.conversation_id = %(c)s AND m.user_id = %(u)s
    FOR UPDATE OF m
), moved AS (
    UPDATE {s}.members m
    SET delivered_seq = GREATEST(m.delivered_seq, %(seq)s),
        read_seq = CASE WHEN %(read)s THEN GREATEST(m.read_seq, %(seq)s)
                        ELSE m.read_seq END
    FROM pos
    WHERE m.conversation_id = %(c)s AND m.user_id = %(u)s
      AND %(seq)s <= pos.last_seq
      AND (%(seq)s > pos.delivered_seq OR (%(read)s AND %(seq)s > pos.read_seq))
    RETURNING 1
)
SELECT pos.read_seq, pos.delivered_seq, pos.last_seq,
       ARRAY(SELECT user_id FROM {s}.members WHERE conversation_id = %(c)s
             ORDER BY user_id),
       (SELECT count(*) FROM moved)
FROM pos
"""


@dataclass(frozen=True)
class Advance:
    """What a receipt found: the positions before it, and the members."""

    read_seq: int
    delivered_seq: int
    last_seq: int
    member_ids: tuple[int, ...]


def advance(
    cur: ShardCursor, conversation_id: int, user_id: int, *, read: bool, seq: int
) -> Advance | None:
    """Move a member's delivered (and, for read, read) position up to seq.

    None when user_id is not a member (or there is no such conversation).
    """
    row = cur.run(
        _ADVANCE, {"c": conversation_id, "u": user_id, "read": read, "seq": seq}
    ).fetchone()
    if row is None:
        return None
    read_seq, delivered_seq, last_seq, member_ids, _moved = row
    return Advance(read_seq, delivered_seq, last_seq, tuple(member_ids))
