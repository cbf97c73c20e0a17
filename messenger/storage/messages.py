"""Messages on the conversation's shard: the idempotent send and history pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg2.errors

from messenger.models import Message
from messenger.storage.pools import ShardCursor

# One statement, so in autocommit mode it is one atomic transaction and one round
# trip: check membership, bump the conversation's seq under its row lock (this
# serialises senders of one conversation, which ordering needs), store the message,
# move the sender's own read position, and queue the fan-out in the outbox.
# A duplicate client_msg_id fails the whole statement (no seq is used up).
_SEND = """
WITH member AS (
    SELECT 1 FROM {s}.members WHERE conversation_id = %(c)s AND user_id = %(u)s
), bumped AS (
    UPDATE {s}.conversations SET last_seq = last_seq + 1
    WHERE conversation_id = %(c)s AND EXISTS (SELECT 1 FROM member)
    RETURNING last_seq
), msg AS (
    INSERT INTO {s}.messages (conversation_id, seq, sender_id, client_msg_id, body)
    SELECT %(c)s, last_seq, %(u)s, %(cmid)s, %(body)s FROM bumped
    RETURNING seq, created_at
), own_read AS (
    UPDATE {s}.members m
    SET read_seq = GREATEST(m.read_seq, msg.seq),
        delivered_seq = GREATEST(m.delivered_seq, msg.seq)
    FROM msg WHERE m.conversation_id = %(c)s AND m.user_id = %(u)s
), queued AS (
    INSERT INTO {s}.outbox (conversation_id, kind, seq, recipients, payload)
    SELECT %(c)s, 'message', msg.seq,
           ARRAY(SELECT user_id FROM {s}.members WHERE conversation_id = %(c)s),
           '{{}}'::jsonb
    FROM msg
    RETURNING outbox_id
)
SELECT msg.seq, msg.created_at FROM msg, queued
"""

_EXISTING = """
SELECT seq, created_at, body FROM {s}.messages
WHERE conversation_id = %s AND sender_id = %s AND client_msg_id = %s
"""

# Membership and last_seq come with the page, so a non-member's request and an
# empty page are told apart in one round trip.
_PAGE = """
SELECT c.last_seq, p.seq, p.sender_id, p.client_msg_id, p.body, p.created_at
FROM {s}.conversations c
JOIN {s}.members mem
  ON mem.conversation_id = c.conversation_id AND mem.user_id = %(u)s
LEFT JOIN LATERAL (
    SELECT seq, sender_id, client_msg_id, body, created_at FROM {s}.messages
    WHERE conversation_id = c.conversation_id {where}
    ORDER BY seq {order} LIMIT %(limit)s
) p ON true
WHERE c.conversation_id = %(c)s
"""
_PAGE_NEWEST = _PAGE.replace("{where}", "").replace("{order}", "DESC")
_PAGE_BEFORE = _PAGE.replace("{where}", "AND seq < %(before)s").replace(
    "{order}", "DESC"
)
_PAGE_AFTER = _PAGE.replace("{where}", "AND seq > %(after)s").replace("{order}", "ASC")


class DuplicateClientMsgId(Exception):
    """The sender already stored a message with this client_msg_id here."""


def insert(
    cur: ShardCursor,
    conversation_id: int,
    sender_id: int,
    client_msg_id: str,
    body: str,
) -> tuple[int, datetime] | None:
    """Store a message and its outbox row; None when the sender is not a member.

    Raises:
        DuplicateClientMsgId: the (sender, client_msg_id) pair exists.
    """
    try:
        return cur.run(
            _SEND,
            {"c": conversation_id, "u": sender_id, "cmid": client_msg_id, "body": body},
        ).fetchone()
    except psycopg2.errors.UniqueViolation:
        raise DuplicateClientMsgId from None


def existing(
    cur: ShardCursor, conversation_id: int, sender_id: int, client_msg_id: str
) -> Message | None:
    row = cur.run(_EXISTING, (conversation_id, sender_id, client_msg_id)).fetchone()
    if row is None:
        return None
    seq, created_at, body = row
    return Message(conversation_id, seq, sender_id, client_msg_id, body, created_at)


def page(
    cur: ShardCursor,
    conversation_id: int,
    user_id: int,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
) -> tuple[int, list[Message]] | None:
    """A page of history in ascending seq, and the conversation's last_seq.

    None when user_id is not a member (or the conversation does not exist).
    """
    params: dict[str, Any] = {"c": conversation_id, "u": user_id, "limit": limit}
    if after is not None:
        sql, params["after"] = _PAGE_AFTER, after
    elif before is not None:
        sql, params["before"] = _PAGE_BEFORE, before
    else:
        sql = _PAGE_NEWEST
    rows = cur.run(sql, params).fetchall()
    if not rows:
        return None
    last_seq = rows[0][0]
    found = [
        Message(conversation_id, r[1], r[2], r[3], r[4], r[5])
        for r in rows
        if r[1] is not None
    ]
    found.sort(key=lambda m: m.seq)
    return last_seq, found
