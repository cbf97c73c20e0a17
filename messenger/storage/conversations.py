"""Conversations and members (conversation's shard), each user's list of them
(user's shard), and the one direct conversation of each pair of users (shard of
the pair's lower user id)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from messenger.models import Member, MemberSettings, Message, MutedUntil
from messenger.storage.messages import (
    MESSAGE_COLUMNS,
    message_columns,
    message_from_row,
)
from messenger.storage.pools import ShardCursor


@dataclass(frozen=True)
class ConversationRecord:
    """A row of {s}.conversations (CONVERSATION_COLUMNS, in that order)."""

    conversation_id: int
    kind: str
    title: str | None
    owner_id: int | None
    created_at: datetime
    last_seq: int

    @classmethod
    def from_row(cls, row: tuple[Any, ...] | None) -> ConversationRecord | None:
        return None if row is None else cls(*row)


@dataclass(frozen=True)
class ListEntry:
    """One conversation of a user's list: its last activity, and its last message
    as the user's mailbox holds it (None before the first message)."""

    conversation_id: int
    last_activity_at: datetime
    last_message: Message | None
    settings: MemberSettings = MemberSettings()


_CLAIM_PAIR = """
INSERT INTO {s}.direct_pairs (user_lo, user_hi, conversation_id) VALUES (%s, %s, %s)
ON CONFLICT DO NOTHING RETURNING conversation_id
"""

_FIND_PAIR = """
SELECT conversation_id FROM {s}.direct_pairs WHERE user_lo = %s AND user_hi = %s
"""

_COPY_PAIRS = """
INSERT INTO {s}.direct_pairs (user_lo, user_hi, conversation_id)
SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[])
ON CONFLICT DO NOTHING
"""

_INSERT = """
INSERT INTO {s}.conversations (conversation_id, kind, title, owner_id)
VALUES (%s, %s, %s, %s)
ON CONFLICT (conversation_id) DO NOTHING
RETURNING conversation_id
"""

_INSERT_MEMBERS = """
INSERT INTO {s}.members (conversation_id, user_id, role)
SELECT %s, u, CASE WHEN u = %s THEN 'owner' ELSE 'member' END
FROM unnest(%s::bigint[]) AS u
ON CONFLICT DO NOTHING
RETURNING user_id
"""

CONVERSATION_COLUMNS = "conversation_id, kind, title, owner_id, created_at, last_seq"

_GET = f"""
SELECT {CONVERSATION_COLUMNS} FROM {{s}}.conversations WHERE conversation_id = %s
"""

_GET_FOR_MEMBER = f"""
SELECT {CONVERSATION_COLUMNS} FROM {{s}}.conversations c
WHERE c.conversation_id = %(c)s
  AND EXISTS (SELECT 1 FROM {{s}}.members m
              WHERE m.conversation_id = %(c)s AND m.user_id = %(u)s)
"""

_MEMBERS = """
SELECT conversation_id, user_id, role, read_seq, delivered_seq, joined_at
FROM {s}.members WHERE conversation_id = ANY(%s)
ORDER BY conversation_id, joined_at, user_id
"""

_MANY = f"""
SELECT {CONVERSATION_COLUMNS} FROM {{s}}.conversations WHERE conversation_id = ANY(%s)
"""

_IS_MEMBER = """
SELECT 1 FROM {s}.members WHERE conversation_id = %s AND user_id = %s
"""

_MEMBER_IDS = "SELECT user_id FROM {s}.members WHERE conversation_id = %s"

# The member's own settings as API.md shows them: a mute that has run out is no
# mute; 'infinity' is "forever".
_SETTINGS_COLUMNS = """
uc.request,
CASE WHEN uc.muted_until IS NULL OR uc.muted_until <= now() THEN NULL
     WHEN uc.muted_until = 'infinity' THEN NULL ELSE uc.muted_until END,
uc.muted_until = 'infinity',
uc.archived
"""

_LIST = f"""
SELECT uc.conversation_id, uc.last_activity_at,
       {_SETTINGS_COLUMNS},
       {message_columns("mb")}
FROM {{s}}.user_conversations uc
LEFT JOIN {{s}}.mailbox mb
  ON mb.user_id = uc.user_id AND mb.conversation_id = uc.conversation_id
 AND mb.seq = uc.last_seq
WHERE uc.user_id = %(u)s
  AND uc.archived = %(archived)s
  AND (%(request)s::boolean IS NULL OR uc.request = %(request)s)
  AND (%(before_at)s::timestamptz IS NULL
       OR (uc.last_activity_at, uc.conversation_id) < (%(before_at)s, %(before_id)s))
ORDER BY uc.last_activity_at DESC, uc.conversation_id DESC
LIMIT %(limit)s
"""


def find_direct_pair(cur: ShardCursor, user_lo: int, user_hi: int) -> int | None:
    """The direct conversation of two users (user_lo's shard), if it was claimed."""
    row = cur.run(_FIND_PAIR, (user_lo, user_hi)).fetchone()
    return None if row is None else int(row[0])


def claim_direct_pair(
    cur: ShardCursor, user_lo: int, user_hi: int, conversation_id: int
) -> bool:
    """Record conversation_id as the pair's (user_lo's shard); False when another
    conversation holds the pair already.

    A claim racing another for the same pair waits for it (the primary key) and
    then loses; in the same READ COMMITTED transaction, find_direct_pair sees
    the winner's conversation.
    """
    row = cur.run(_CLAIM_PAIR, (user_lo, user_hi, conversation_id)).fetchone()
    return row is not None


def copy_direct_pairs(cur: ShardCursor, pairs: list[tuple[int, int, int]]) -> int:
    """Insert (user_lo, user_hi, conversation_id) rows, each on this cursor's
    shard, keeping a pair already there; how many were new."""
    if not pairs:
        return 0
    los, his, conversation_ids = (list(column) for column in zip(*pairs, strict=True))
    cur.run(_COPY_PAIRS, (los, his, conversation_ids))
    return cur.rowcount


def insert(
    cur: ShardCursor,
    conversation_id: int,
    kind: str,
    title: str | None,
    owner_id: int | None,
) -> bool:
    """Insert a conversation; False when it exists already."""
    return (
        cur.run(_INSERT, (conversation_id, kind, title, owner_id)).fetchone()
        is not None
    )


def insert_members(
    cur: ShardCursor, conversation_id: int, user_ids: list[int], owner_id: int | None
) -> list[int]:
    """Add members (idempotent); returns the ids that were new."""
    rows = cur.run(_INSERT_MEMBERS, (conversation_id, owner_id, user_ids)).fetchall()
    return [r[0] for r in rows]


def get(cur: ShardCursor, conversation_id: int) -> ConversationRecord | None:
    return ConversationRecord.from_row(cur.run(_GET, (conversation_id,)).fetchone())


def get_for_member(
    cur: ShardCursor, conversation_id: int, user_id: int
) -> ConversationRecord | None:
    """The conversation if user_id is a member of it, else None."""
    row = cur.run(_GET_FOR_MEMBER, {"c": conversation_id, "u": user_id}).fetchone()
    return ConversationRecord.from_row(row)


def members_of(
    cur: ShardCursor, conversation_ids: list[int]
) -> dict[int, list[Member]]:
    result: dict[int, list[Member]] = {c: [] for c in conversation_ids}
    for c, user_id, role, read_seq, delivered_seq, joined_at in cur.run(
        _MEMBERS, (conversation_ids,)
    ).fetchall():
        result[c].append(Member(user_id, role, read_seq, delivered_seq, joined_at))
    return result


def is_member(cur: ShardCursor, conversation_id: int, user_id: int) -> bool:
    return cur.run(_IS_MEMBER, (conversation_id, user_id)).fetchone() is not None


def member_ids(cur: ShardCursor, conversation_id: int) -> list[int]:
    return [r[0] for r in cur.run(_MEMBER_IDS, (conversation_id,)).fetchall()]


def list_for_user(
    cur: ShardCursor,
    user_id: int,
    limit: int,
    before: tuple[datetime, int] | None,
    *,
    archived: bool = False,
    request: bool | None = None,
) -> list[ListEntry]:
    """The user's conversations by latest activity, with their last message:
    the archived ones or the others, and only requests (True), no requests
    (False) or both (None)."""
    before_at, before_id = before if before else (None, None)
    rows = cur.run(
        _LIST,
        {
            "u": user_id,
            "before_at": before_at,
            "before_id": before_id,
            "limit": limit,
            "archived": archived,
            "request": request,
        },
    ).fetchall()
    return [
        ListEntry(
            row[0],
            row[1],
            message_from_row(row[0], row[6:]) if row[6] is not None else None,
            _settings(row[2:6]),
        )
        for row in rows
    ]


def _settings(row: Any) -> MemberSettings:
    request, muted_at, forever, archived = row
    muted: MutedUntil = "forever" if forever else muted_at
    return MemberSettings(bool(request), muted, bool(archived))


_GET_SETTINGS = f"""
SELECT {_SETTINGS_COLUMNS} FROM {{s}}.user_conversations uc
WHERE uc.user_id = %s AND uc.conversation_id = %s
"""

_LOCK_SETTINGS = f"""
SELECT {_SETTINGS_COLUMNS} FROM {{s}}.user_conversations uc
WHERE uc.user_id = %s AND uc.conversation_id = %s FOR UPDATE
"""

_SET_SETTINGS = """
UPDATE {s}.user_conversations
SET muted_until = CASE WHEN %(forever)s THEN 'infinity'::timestamptz
                       ELSE %(muted)s::timestamptz END,
    archived = %(archived)s
WHERE user_id = %(u)s AND conversation_id = %(c)s
"""

_ACCEPT = """
UPDATE {s}.user_conversations uc SET request = false
FROM {s}.user_conversations old
WHERE uc.user_id = %s AND uc.conversation_id = %s
  AND old.user_id = uc.user_id AND old.conversation_id = uc.conversation_id
RETURNING old.request
"""


def settings_of(
    cur: ShardCursor, user_id: int, conversation_id: int, *, lock: bool = False
) -> MemberSettings | None:
    """The member's own settings (member's shard); None when the conversation is
    not in its list."""
    row = cur.run(
        _LOCK_SETTINGS if lock else _GET_SETTINGS, (user_id, conversation_id)
    ).fetchone()
    return None if row is None else _settings(row)


def set_settings(
    cur: ShardCursor,
    user_id: int,
    conversation_id: int,
    muted_until: MutedUntil,
    archived: bool,
) -> None:
    cur.run(
        _SET_SETTINGS,
        {
            "u": user_id,
            "c": conversation_id,
            "forever": muted_until == "forever",
            "muted": None if isinstance(muted_until, str) else muted_until,
            "archived": archived,
        },
    )


def accept(cur: ShardCursor, user_id: int, conversation_id: int) -> bool | None:
    """Clear the member's request flag; whether it was set (None: the
    conversation is not in its list)."""
    row = cur.run(_ACCEPT, (user_id, conversation_id)).fetchone()
    return None if row is None else bool(row[0])


def rows_across(
    cur: ShardCursor, ids_by_schema: dict[str, list[int]]
) -> tuple[list[ConversationRecord], dict[int, list[Member]]]:
    """Conversations and members from several shard schemas of one database, in
    two round trips however many schemas (used by the conversation list)."""
    conv_parts, member_parts = [], []
    for schema, ids in sorted(ids_by_schema.items()):
        conv_parts.append(cur.mogrify(_MANY.format(s=schema), (ids,)))
        member_parts.append(
            cur.mogrify(
                _MEMBERS.format(s=schema).replace(
                    "ORDER BY conversation_id, joined_at, user_id", ""
                ),
                (ids,),
            )
        )
    if not conv_parts:
        return [], {}
    cur.execute(b" UNION ALL ".join(b"(" + p.strip() + b")" for p in conv_parts))
    records = [ConversationRecord(*row) for row in cur.fetchall()]
    cur.execute(
        b" UNION ALL ".join(b"(" + p.strip() + b")" for p in member_parts)
        + b" ORDER BY 1, 6, 2"
    )
    members: dict[int, list[Member]] = {r.conversation_id: [] for r in records}
    for c, user_id, role, read_seq, delivered_seq, joined_at in cur.fetchall():
        members.setdefault(c, []).append(
            Member(user_id, role, read_seq, delivered_seq, joined_at)
        )
    return records, members


_LAST_MESSAGE = f"""
SELECT {MESSAGE_COLUMNS} FROM {{s}}.messages
WHERE conversation_id = %s AND seq = %s
"""


def last_message(cur: ShardCursor, conversation_id: int, seq: int) -> Message | None:
    """The message at seq (the conversation's last_seq); None before the first."""
    if seq <= 0:
        return None
    row = cur.run(_LAST_MESSAGE, (conversation_id, seq)).fetchone()
    return None if row is None else message_from_row(conversation_id, row)


_MUTED_AMONG = """
SELECT user_id, conversation_id FROM {s}.user_conversations
WHERE user_id = ANY(%s) AND conversation_id = ANY(%s) AND muted_until > now()
"""


def muted_among(
    cur: ShardCursor, user_ids: list[int], conversation_ids: list[int]
) -> set[tuple[int, int]]:
    """(user, conversation) pairs muted now (users' shard)."""
    rows = cur.run(_MUTED_AMONG, (user_ids, conversation_ids))
    return {(int(r[0]), int(r[1])) for r in rows}
