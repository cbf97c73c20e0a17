"""Sessions on the user's shard (sql/shard/0030_accounts_and_safety.sql)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from messenger.storage.pools import ShardCursor

# last_used_at is written at most this often per session: a session list may lag
# by a minute (API.md), and a busy client does not write on every request.
SESSION_TOUCH_SECS = 30


@dataclass(frozen=True)
class SessionRow:
    session_id: int
    user_id: int
    user_agent: str
    created_at: datetime
    last_used_at: datetime


@dataclass(frozen=True)
class CheckedSession:
    """A session found by its token: its id and when it was last used."""

    session_id: int
    last_used_at: datetime


_COLUMNS = "session_id, user_id, user_agent, created_at, last_used_at"

_INSERT = """
INSERT INTO {s}.sessions (session_id, token_hash, user_id, user_agent)
VALUES (%s, %s, %s, %s)
ON CONFLICT (session_id) DO NOTHING
RETURNING session_id
"""
# Session ids are random below 2**53, so JavaScript clients hold them exactly.
SESSION_ID_BITS = 53
# A clash of two random 53-bit ids is rare enough that a few tries always do.
INSERT_TRIES = 5

# The check and the throttled touch in one statement: the row is rewritten only
# when its last use is older than SESSION_TOUCH_SECS.
_CHECK = """
WITH found AS (
    SELECT session_id, last_used_at FROM {s}.sessions
    WHERE token_hash = %(h)s AND user_id = %(u)s
      AND last_used_at > now() - make_interval(days => %(idle)s)
), touched AS (
    UPDATE {s}.sessions s SET last_used_at = now()
    FROM found WHERE s.session_id = found.session_id
      AND found.last_used_at < now() - make_interval(secs => %(touch)s)
    RETURNING s.session_id, s.last_used_at
)
SELECT f.session_id, COALESCE(t.last_used_at, f.last_used_at)
FROM found f LEFT JOIN touched t USING (session_id)
"""

_LIST = f"""
SELECT {_COLUMNS} FROM {{s}}.sessions
WHERE user_id = %(u)s AND last_used_at > now() - make_interval(days => %(idle)s)
ORDER BY created_at DESC, session_id DESC
"""

_DELETE_IDLE = """
DELETE FROM {s}.sessions
WHERE user_id = %(u)s AND last_used_at <= now() - make_interval(days => %(idle)s)
"""

_DELETE_BY_HASH = """
DELETE FROM {s}.sessions WHERE token_hash = %s AND user_id = %s RETURNING token_hash
"""
_DELETE_BY_ID = """
DELETE FROM {s}.sessions WHERE session_id = %s AND user_id = %s RETURNING token_hash
"""
_DELETE_OTHERS = """
DELETE FROM {s}.sessions WHERE user_id = %s AND session_id <> %s RETURNING token_hash
"""


def insert(cur: ShardCursor, token_hash: bytes, user_id: int, user_agent: str) -> int:
    """Store a new session under a fresh random id; its id."""
    for _ in range(INSERT_TRIES):
        session_id = 1 + secrets.randbelow(2**SESSION_ID_BITS - 1)
        row = cur.run(_INSERT, (session_id, token_hash, user_id, user_agent)).fetchone()
        if row is not None:
            return int(row[0])
    raise RuntimeError("no free session id after several tries")


def check(
    cur: ShardCursor, token_hash: bytes, user_id: int, idle_days: int
) -> CheckedSession | None:
    """The live session of this token and user (touching its last use, at most
    every SESSION_TOUCH_SECS); None when unknown, revoked or idle too long."""
    row = cur.run(
        _CHECK,
        {"h": token_hash, "u": user_id, "idle": idle_days, "touch": SESSION_TOUCH_SECS},
    ).fetchone()
    return None if row is None else CheckedSession(int(row[0]), row[1])


def list_live(cur: ShardCursor, user_id: int, idle_days: int) -> list[SessionRow]:
    """The user's sessions that have not expired, newest first; expired ones are
    deleted on the way."""
    cur.run(_DELETE_IDLE, {"u": user_id, "idle": idle_days})
    rows = cur.run(_LIST, {"u": user_id, "idle": idle_days}).fetchall()
    return [SessionRow(*row) for row in rows]


def delete_by_hash(cur: ShardCursor, token_hash: bytes, user_id: int) -> list[bytes]:
    rows = cur.run(_DELETE_BY_HASH, (token_hash, user_id)).fetchall()
    return [bytes(r[0]) for r in rows]


def delete_by_id(cur: ShardCursor, session_id: int, user_id: int) -> list[bytes]:
    """Delete one session of the user; the token hashes deleted (none or one)."""
    rows = cur.run(_DELETE_BY_ID, (session_id, user_id)).fetchall()
    return [bytes(r[0]) for r in rows]


def delete_others(cur: ShardCursor, user_id: int, keep_session_id: int) -> list[bytes]:
    """Delete every session of the user but one; the token hashes deleted."""
    rows = cur.run(_DELETE_OTHERS, (user_id, keep_session_id)).fetchall()
    return [bytes(r[0]) for r in rows]
