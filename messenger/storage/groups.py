"""Group management on the conversation's shard: rename, members in and out,
ownership, deletion.

Every change starts with `lock`: the conversation row lock serialises changes of
one conversation with each other and with sends (a send bumps last_seq under the
same lock), and statements after it see every change committed before it.
"""

from __future__ import annotations

from messenger.storage.conversations import CONVERSATION_COLUMNS, ConversationRecord
from messenger.storage.pools import ShardCursor

_LOCK = f"""
SELECT {CONVERSATION_COLUMNS}
FROM {{s}}.conversations WHERE conversation_id = %s FOR UPDATE
"""

# A new member starts with everything before it counted as delivered and read:
# joining a group with a long history does not make that history unread.
_ADD_MEMBER = """
INSERT INTO {s}.members (conversation_id, user_id, role, read_seq, delivered_seq)
VALUES (%(c)s, %(u)s, 'member', %(seq)s, %(seq)s)
ON CONFLICT DO NOTHING
RETURNING user_id
"""

_REMOVE_MEMBER = """
DELETE FROM {s}.members WHERE conversation_id = %s AND user_id = %s RETURNING role
"""

_SET_OWNER = """
UPDATE {s}.members SET role = CASE WHEN user_id = %(u)s THEN 'owner' ELSE 'member' END
WHERE conversation_id = %(c)s AND (user_id = %(u)s OR role = 'owner');
UPDATE {s}.conversations SET owner_id = %(u)s WHERE conversation_id = %(c)s;
"""

_RENAME = "UPDATE {s}.conversations SET title = %s WHERE conversation_id = %s"

# Waits for a fan-out of this conversation in flight (it holds the same advisory
# lock), then drops the messages and their undelivered fan-outs: nobody may see
# them any more. Other outbox rows stay, so the events queued before the deletion
# (and the conversation_deleted event itself) still go out in order.
_DELETE = """
SELECT pg_advisory_xact_lock(%(c)s);
DELETE FROM {s}.outbox WHERE conversation_id = %(c)s AND kind = 'message';
DELETE FROM {s}.messages WHERE conversation_id = %(c)s;
DELETE FROM {s}.conversations WHERE conversation_id = %(c)s;
"""


def lock(cur: ShardCursor, conversation_id: int) -> ConversationRecord | None:
    """Lock the conversation row for a change; None if it does not exist."""
    return ConversationRecord.from_row(cur.run(_LOCK, (conversation_id,)).fetchone())


def add_member(
    cur: ShardCursor, conversation_id: int, user_id: int, last_seq: int
) -> bool:
    """Add a plain member; False when it is a member already."""
    row = cur.run(
        _ADD_MEMBER, {"c": conversation_id, "u": user_id, "seq": last_seq}
    ).fetchone()
    return row is not None


def remove_member(cur: ShardCursor, conversation_id: int, user_id: int) -> bool:
    """Remove a member; False when it was not one."""
    return cur.run(_REMOVE_MEMBER, (conversation_id, user_id)).fetchone() is not None


def set_owner(cur: ShardCursor, conversation_id: int, user_id: int) -> None:
    """Make user_id (a member) the owner; the previous owner becomes a member."""
    cur.run(_SET_OWNER, {"c": conversation_id, "u": user_id})


def rename(cur: ShardCursor, conversation_id: int, title: str) -> None:
    cur.run(_RENAME, (title, conversation_id))


def delete(cur: ShardCursor, conversation_id: int) -> None:
    """Delete the conversation, its members and messages (outbox events stay)."""
    cur.run(_DELETE, {"c": conversation_id})
