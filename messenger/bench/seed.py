"""Lengthen a conversation fast by copying its messages in SQL (the history scenario).

A single conversation takes messages one at a time (its row lock orders them), so
100,000 sends through the API would take minutes. The first messages go through the
API; this copies them under new seqs, doubling until the target length, and moves
conversations.last_seq along. Only messages and last_seq are written: nothing else
reads those extra rows during the bench (no events, no mailbox copies).

It knows the shard schema (sql/shard/*.sql), which the bench otherwise never does; on
any database error the caller falls back to the API.
"""

from __future__ import annotations

import psycopg2
from psycopg2 import sql

from messenger.storage.shards import schema_name

_LOCK = (
    "SELECT last_seq FROM {s}.conversations WHERE conversation_id = %(c)s FOR UPDATE"
)
_COPY = """
INSERT INTO {s}.messages
    (conversation_id, seq, sender_id, client_msg_id, body, created_at)
SELECT conversation_id, seq + %(offset)s, sender_id,
       left(client_msg_id, 40) || '-c' || (seq + %(offset)s), body, created_at
  FROM {s}.messages
 WHERE conversation_id = %(c)s AND seq BETWEEN 1 AND %(n)s
"""
_BUMP = "UPDATE {s}.conversations SET last_seq = %(seq)s WHERE conversation_id = %(c)s"


class SeedError(Exception):
    """The copy could not be made (schema changed, database unreachable)."""


def extend_by_copy(dsn: str, shards: int, conversation_id: int, target: int) -> int:
    """Copy the conversation's messages until it has target of them; return the count.

    Raises:
        SeedError: a database error; nothing was changed by the failed step.
    """
    schema = sql.Identifier(schema_name(conversation_id % shards))
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as exc:
        raise SeedError(f"connecting failed: {exc}".strip()) from exc
    try:
        with conn, conn.cursor() as cur:  # one transaction: all of it or nothing
            cur.execute(sql.SQL(_LOCK).format(s=schema), {"c": conversation_id})
            row = cur.fetchone()
            if row is None or row[0] < 1:
                raise SeedError(f"conversation {conversation_id} has no messages")
            have = int(row[0])
            while have < target:
                count = min(have, target - have)
                cur.execute(
                    sql.SQL(_COPY).format(s=schema),
                    {"c": conversation_id, "offset": have, "n": count},
                )
                have += count
            cur.execute(
                sql.SQL(_BUMP).format(s=schema), {"c": conversation_id, "seq": have}
            )
    except psycopg2.Error as exc:
        raise SeedError(f"copying messages failed: {exc}".strip()) from exc
    finally:
        conn.close()
    return have


def analyze_messages(dsn: str, shards: int, conversation_id: int) -> None:
    """ANALYZE the messages table of the conversation's shard.

    Freshly filled tables have no statistics, and then PostgreSQL may answer the
    newest page by sorting the whole conversation; autovacuum would analyze them at a
    moment of its choosing. Analyzing now measures the steady state, every run.

    Raises:
        SeedError: a database error.
    """
    table = sql.SQL("{}.messages").format(
        sql.Identifier(schema_name(conversation_id % shards))
    )
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as exc:
        raise SeedError(f"connecting failed: {exc}".strip()) from exc
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ANALYZE {}").format(table))
    except psycopg2.Error as exc:
        raise SeedError(f"ANALYZE failed: {exc}".strip()) from exc
    finally:
        conn.close()
