"""Messages on the conversation's shard: the idempotent send and history pages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from messenger.models import Attachment, Message
from messenger.storage.pools import ShardCursor
from messenger.storage.transaction import PipelinedTransaction
from messenger.views import attachment_json

# Every read of a message (or of a mailbox copy, which has the same columns)
# selects these, in this order, and message_from_row() makes the Message.
MESSAGE_FIELDS = (
    "seq",
    "sender_id",
    "client_msg_id",
    "body",
    "created_at",
    "reply_to",
    "edited_at",
    "deleted",
    "reactions",
    "attachments",
)
MESSAGE_COLUMNS = ", ".join(MESSAGE_FIELDS)


def message_columns(alias: str) -> str:
    """MESSAGE_COLUMNS of a table alias: "m.seq, m.sender_id, ..."."""
    return ", ".join(f"{alias}.{name}" for name in MESSAGE_FIELDS)


def message_from_row(conversation_id: int, row: Sequence[Any]) -> Message:
    """A Message from the MESSAGE_COLUMNS of a row."""
    (
        seq,
        sender_id,
        client_msg_id,
        body,
        created_at,
        reply_to,
        edited_at,
        deleted,
        reactions,
        attachments,
    ) = row
    return Message(
        conversation_id,
        seq,
        sender_id,
        client_msg_id,
        body,
        created_at,
        reply_to,
        edited_at,
        bool(deleted),
        {emoji: list(ids) for emoji, ids in (reactions or {}).items()},
        tuple(attachment_from_json(a, sender_id) for a in attachments or ()),
    )


def attachment_from_json(item: dict[str, Any], uploader_id: int) -> Attachment:
    """An Attachment from its stored JSON (views.attachment_json's shape)."""
    return Attachment(
        int(item["id"]),
        uploader_id,
        str(item["content_type"]),
        int(item["size"]),
        str(item["filename"]),
        str(item["sha256"]),
        item["width"],
        item["height"],
        datetime.fromisoformat(item["created_at"]),
    )


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
    INSERT INTO {s}.messages
        (conversation_id, seq, sender_id, client_msg_id, body, reply_to, attachments)
    SELECT %(c)s, last_seq, %(u)s, %(cmid)s, %(body)s, %(reply_to)s, %(att)s::jsonb
    FROM bumped
    ON CONFLICT DO NOTHING
    RETURNING seq
), carried AS (
    INSERT INTO {s}.message_attachments (conversation_id, seq, attachment_id)
    SELECT %(c)s, msg.seq, a FROM msg, unnest(%(att_ids)s::bigint[]) AS a
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

_EXISTING = f"""
SELECT {MESSAGE_COLUMNS} FROM {{s}}.messages
WHERE conversation_id = %s AND sender_id = %s AND client_msg_id = %s
"""

# Membership and last_seq come with the page, so a non-member's request and an
# empty page are told apart in one round trip.
_PAGE = f"""
SELECT c.last_seq, {message_columns("p")}
FROM {{s}}.conversations c
JOIN {{s}}.members mem
  ON mem.conversation_id = c.conversation_id AND mem.user_id = %(u)s
LEFT JOIN LATERAL (
    SELECT {MESSAGE_COLUMNS} FROM {{s}}.messages
    WHERE conversation_id = c.conversation_id {{where}}
    ORDER BY seq {{order}} LIMIT %(limit)s
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
    reply_to: int | None = None,
    attachments: Sequence[Attachment] = (),
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
        {
            "c": conversation_id,
            "u": sender_id,
            "cmid": client_msg_id,
            "body": body,
            "reply_to": reply_to,
            "att": json.dumps([attachment_json(a) for a in attachments]),
            "att_ids": [a.attachment_id for a in attachments],
        },
    ).fetchone()
    if row is None:
        return None
    seq, created_at, recipients, has_queued_fanout, is_new = row
    if not is_new:
        raise DuplicateClientMsgId
    return StoredMessage(
        Message(
            conversation_id,
            seq,
            sender_id,
            client_msg_id,
            body,
            created_at,
            reply_to=reply_to,
            attachments=tuple(attachments),
        ),
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
    return None if row is None else message_from_row(conversation_id, row)


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
        message_from_row(conversation_id, row[1:])
        for row in rows
        if row[1] is not None  # the LEFT JOIN's one empty row of an empty page
    ]
    found.sort(key=lambda m: m.seq)
    return HistoryPage(last_seq=rows[0][0], messages=found)


# ---- edits, deletes, reactions ------------------------------------------------
# Each change runs in one transaction that starts with _LOCK_CONVERSATION: the
# conversation row lock orders it with sends and membership changes (the members
# it reads are the members at that moment), and its outbox row commits in the
# order the changes were made.

_LOCK_CONVERSATION = """
SELECT c.kind, c.owner_id,
       ARRAY(SELECT user_id FROM {s}.members
             WHERE conversation_id = %(c)s ORDER BY user_id)
FROM {s}.conversations c WHERE c.conversation_id = %(c)s
FOR UPDATE
"""

_MESSAGE_FOR_UPDATE = f"""
SELECT {MESSAGE_COLUMNS} FROM {{s}}.messages
WHERE conversation_id = %(c)s AND seq = %(seq)s
FOR UPDATE
"""

_EDIT = f"""
UPDATE {{s}}.messages SET body = %(body)s, edited_at = clock_timestamp()
WHERE conversation_id = %(c)s AND seq = %(seq)s
RETURNING {MESSAGE_COLUMNS}
"""

_TOMBSTONE = f"""
DELETE FROM {{s}}.message_reactions WHERE conversation_id = %(c)s AND seq = %(seq)s;
DELETE FROM {{s}}.message_attachments WHERE conversation_id = %(c)s AND seq = %(seq)s;
UPDATE {{s}}.messages
SET deleted = true, body = '', reply_to = NULL,
    reactions = jsonb_build_object(), attachments = jsonb_build_array()
WHERE conversation_id = %(c)s AND seq = %(seq)s
RETURNING {MESSAGE_COLUMNS};
"""

# A member's one reaction: a new emoji replaces the old; the same one again
# changes nothing (no row returned).
_SET_REACTION = """
INSERT INTO {s}.message_reactions AS r (conversation_id, seq, user_id, emoji)
VALUES (%(c)s, %(seq)s, %(u)s, %(emoji)s)
ON CONFLICT (conversation_id, seq, user_id)
DO UPDATE SET emoji = EXCLUDED.emoji, created_at = now()
WHERE r.emoji <> EXCLUDED.emoji
RETURNING 1
"""

_REMOVE_REACTION = """
DELETE FROM {s}.message_reactions
WHERE conversation_id = %(c)s AND seq = %(seq)s AND user_id = %(u)s
RETURNING 1
"""

# The message's reactions column, rebuilt from its rows: {"👍": [ids ascending]}.
_REBUILD_REACTIONS = f"""
UPDATE {{s}}.messages m
SET reactions = COALESCE(
    (SELECT jsonb_object_agg(emoji, ids) FROM (
         SELECT emoji, jsonb_agg(user_id ORDER BY user_id) AS ids
         FROM {{s}}.message_reactions r
         WHERE r.conversation_id = m.conversation_id AND r.seq = m.seq
         GROUP BY emoji) per_emoji),
    jsonb_build_object())
WHERE m.conversation_id = %(c)s AND m.seq = %(seq)s
RETURNING {message_columns("m")}
"""


@dataclass(frozen=True)
class LockedMessage:
    """A message locked for a change, with what the rules need."""

    kind: str
    owner_id: int | None
    # The members now, ascending.
    member_ids: tuple[int, ...]
    # None when the conversation has no such seq.
    message: Message | None


def lock_message(
    cur: ShardCursor, conversation_id: int, seq: int
) -> LockedMessage | None:
    """Lock the conversation and one of its messages; None when there is no such
    conversation."""
    params = {"c": conversation_id, "seq": seq}
    row = cur.run(_LOCK_CONVERSATION, params).fetchone()
    if row is None:
        return None
    kind, owner_id, member_ids = row
    found = cur.run(_MESSAGE_FOR_UPDATE, params).fetchone()
    message = None if found is None else message_from_row(conversation_id, found)
    return LockedMessage(kind, owner_id, tuple(member_ids), message)


def _returned(cur: ShardCursor, conversation_id: int) -> Message:
    row = cur.fetchone()
    if row is None:  # pragma: no cover - the row is locked by lock_message
        raise RuntimeError("the locked message is gone")
    return message_from_row(conversation_id, row)


def edit(cur: ShardCursor, conversation_id: int, seq: int, body: str) -> Message:
    """Set a message's body and edited_at; the message after the change."""
    cur.run(_EDIT, {"c": conversation_id, "seq": seq, "body": body})
    return _returned(cur, conversation_id)


def tombstone(cur: ShardCursor, conversation_id: int, seq: int) -> Message:
    """Make a message a tombstone (its seq stays); the tombstone."""
    cur.run(_TOMBSTONE, {"c": conversation_id, "seq": seq})
    return _returned(cur, conversation_id)


def set_reaction(
    cur: ShardCursor, conversation_id: int, seq: int, user_id: int, emoji: str | None
) -> Message | None:
    """Set (emoji) or remove (None) a member's reaction; the message after the
    change, or None when nothing changed."""
    params = {"c": conversation_id, "seq": seq, "u": user_id, "emoji": emoji}
    sql = _REMOVE_REACTION if emoji is None else _SET_REACTION
    if cur.run(sql, params).fetchone() is None:
        return None
    cur.run(_REBUILD_REACTIONS, params)
    return _returned(cur, conversation_id)


_LAST_SEQ_FOR_MEMBER = """
SELECT c.last_seq FROM {s}.conversations c
WHERE c.conversation_id = %(c)s
  AND EXISTS (SELECT 1 FROM {s}.members m
              WHERE m.conversation_id = %(c)s AND m.user_id = %(u)s)
"""


def last_seq_for_member(
    cur: ShardCursor, conversation_id: int, user_id: int
) -> int | None:
    """The conversation's last_seq if user_id is a member, else None."""
    row = cur.run(_LAST_SEQ_FOR_MEMBER, {"c": conversation_id, "u": user_id}).fetchone()
    return None if row is None else int(row[0])
