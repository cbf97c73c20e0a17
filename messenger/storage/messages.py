"""Messages on the conversation's shard: the idempotent send and history pages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from messenger.models import Message
from messenger.storage.pools import ShardCursor
from messenger.storage.transaction import PipelinedTransaction

# The send's first round trip: check membership, bump the conversation's seq
# under its row lock (this serialises senders of one conversation, which ordering
# needs), store the message and move the sender's own read position, in a
# transaction left open so the fan-out can join it (storage/transaction.py).
# A retry (a stored client_msg_id) bumps nothing and inserts nothing: it must
# not raise a unique violation either, whose log line would carry the statement
# and so the message body. Two retries racing past the NOT EXISTS both bump,
# the second's insert does nothing (ON CONFLICT) and its `is_new` is false: the
# caller rolls back, so no seq is used up.
# The second statement runs with a fresh snapshot, after the first took the
# conversation's row lock: membership changes (which take that lock too) can't
# slip in between, so the recipients it reads are exactly the members at this seq,
# and it sees any outbox row still waiting (then this message must queue behind
# it to keep every member's events in order).
_STORE = """
WITH member AS (
    SELECT 1 FROM {s}.members WHERE conversation_id = %(c)s AND user_id = %(u)s
      AND NOT EXISTS (SELECT 1 FROM {s}.messages
                      WHERE conversation_id = %(c)s AND sender_id = %(u)s
                        AND client_msg_id = %(cmid)s)
), bumped AS (
    UPDATE {s}.conversations SET last_seq = last_seq + 1
    WHERE conversation_id = %(c)s AND EXISTS (SELECT 1 FROM member)
    RETURNING last_seq
), msg AS (
    INSERT INTO {s}.messages (conversation_id, seq, sender_id, client_msg_id, body)
    SELECT %(c)s, last_seq, %(u)s, %(cmid)s, %(body)s FROM bumped
    ON CONFLICT DO NOTHING
    RETURNING seq
)
UPDATE {s}.members m
SET read_seq = GREATEST(m.read_seq, msg.seq),
    delivered_seq = GREATEST(m.delivered_seq, msg.seq)
FROM msg WHERE m.conversation_id = %(c)s AND m.user_id = %(u)s;
SELECT m.seq, m.created_at,
       ARRAY(SELECT user_id FROM {s}.members WHERE conversation_id = %(c)s),
       EXISTS (SELECT 1 FROM {s}.outbox WHERE conversation_id = %(c)s),
       m.xmin::text::bigint = txid_current_if_assigned() %% 4294967296 AS is_new
FROM {s}.messages m
WHERE m.conversation_id = %(c)s AND m.sender_id = %(u)s
  AND m.client_msg_id = %(cmid)s
  AND EXISTS (SELECT 1 FROM {s}.members
              WHERE conversation_id = %(c)s AND user_id = %(u)s)
"""

_QUEUE_MESSAGE = """
INSERT INTO {s}.outbox (conversation_id, kind, seq, recipients, payload)
VALUES (%s, 'message', %s, %s, '{{}}'::jsonb);
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


@dataclass(frozen=True)
class StoredMessage:
    """A message just stored in an open send transaction, and what its fan-out
    needs."""

    message: Message
    # The members at the message's seq (the sender included).
    recipients: tuple[int, ...]
    # An earlier fan-out of the conversation still waits in the outbox: this one
    # must queue behind it, so every member's events stay in seq order.
    has_queued_fanout: bool


def store(
    tx: PipelinedTransaction,
    conversation_id: int,
    sender_id: int,
    client_msg_id: str,
    body: str,
) -> StoredMessage | None:
    """Store a message in the send transaction (opening it: one round trip).

    Returns:
        The stored message, or None when the sender is not a member.

    Raises:
        DuplicateClientMsgId: the (sender, client_msg_id) pair exists (no seq is
            used up; the transaction is rolled back when the block ends).
    """
    row = tx.run(
        _STORE,
        {"c": conversation_id, "u": sender_id, "cmid": client_msg_id, "body": body},
    ).fetchone()
    if row is None:
        return None
    seq, created_at, recipients, has_queued_fanout, is_new = row
    if not is_new:
        raise DuplicateClientMsgId
    return StoredMessage(
        Message(conversation_id, seq, sender_id, client_msg_id, body, created_at),
        tuple(recipients),
        bool(has_queued_fanout),
    )


def queue_fanout_and_commit(tx: PipelinedTransaction, stored: StoredMessage) -> None:
    """Queue the message's fan-out in the outbox and commit (one round trip)."""
    message = stored.message
    tx.commit(
        tx.statement(
            _QUEUE_MESSAGE,
            (message.conversation_id, message.seq, list(stored.recipients)),
        )
    )


def existing(
    cur: ShardCursor, conversation_id: int, sender_id: int, client_msg_id: str
) -> Message | None:
    row = cur.run(_EXISTING, (conversation_id, sender_id, client_msg_id)).fetchone()
    if row is None:
        return None
    seq, created_at, body = row
    return Message(conversation_id, seq, sender_id, client_msg_id, body, created_at)


@dataclass(frozen=True)
class HistoryPage:
    """Messages in ascending seq, and the conversation's last_seq."""

    last_seq: int
    messages: list[Message]


def page(
    cur: ShardCursor,
    conversation_id: int,
    user_id: int,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
) -> HistoryPage | None:
    """A page of history; None when user_id is not a member (or the conversation
    does not exist)."""
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
    found = [
        Message(conversation_id, seq, sender_id, client_msg_id, body, created_at)
        for _last_seq, seq, sender_id, client_msg_id, body, created_at in rows
        if seq is not None  # the LEFT JOIN's one empty row of an empty page
    ]
    found.sort(key=lambda m: m.seq)
    return HistoryPage(last_seq=rows[0][0], messages=found)
