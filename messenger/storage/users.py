"""Users and sessions: directory queries, plus the per-user row on the user's shard."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from messenger.storage.pools import ShardCursor

_NEXT_ID = "SELECT nextval('{s}.global_ids')"

_INSERT_USER = """
INSERT INTO {s}.users (user_id, handle, display_name, password_hash)
VALUES (%s, %s, %s, %s)
ON CONFLICT (handle) DO NOTHING
RETURNING user_id, handle, display_name, created_at
"""

_USER_COLUMNS = "user_id, handle, display_name, created_at"

_BY_ID = f"SELECT {_USER_COLUMNS} FROM {{s}}.users WHERE user_id = %s"
_BY_IDS = f"SELECT {_USER_COLUMNS} FROM {{s}}.users WHERE user_id = ANY(%s)"
_BY_HANDLE = f"SELECT {_USER_COLUMNS} FROM {{s}}.users WHERE handle = %s"
_CREDENTIALS = "SELECT user_id, password_hash FROM {s}.users WHERE handle = %s"
_SET_HASH = "UPDATE {s}.users SET password_hash = %s WHERE user_id = %s"

_HASH_BY_ID = "SELECT password_hash FROM {s}.users WHERE user_id = %s"
_SET_DISPLAY_NAME = f"""
UPDATE {{s}}.users SET display_name = %s WHERE user_id = %s RETURNING {_USER_COLUMNS}
"""

# A prefix of the handle or the display name, case-insensitive, through the
# lower(...) text_pattern_ops indexes of sql/directory/0030_people_search.sql
# (the LIKE patterns must repeat their exact expressions). The exact handle
# first, then handles, then display names, alphabetically.
_SEARCH = f"""
SELECT {_USER_COLUMNS} FROM (
    SELECT {_USER_COLUMNS} FROM {{s}}.users
    WHERE lower(handle) LIKE %(prefix)s ESCAPE '\\'
    UNION
    SELECT {_USER_COLUMNS} FROM {{s}}.users
    WHERE lower(display_name) LIKE %(prefix)s ESCAPE '\\'
) found
WHERE NOT user_id = ANY(%(hidden)s)
ORDER BY lower(handle) = %(q)s DESC,
         lower(handle) LIKE %(prefix)s ESCAPE '\\' DESC,
         lower(handle), user_id
LIMIT %(limit)s
"""

_INSERT_USER_STATE = """
INSERT INTO {s}.user_state (user_id) VALUES (%s) ON CONFLICT DO NOTHING
"""

UserRow = tuple[int, str, str, datetime]


def next_id(cur: ShardCursor) -> int:
    """A new global id (users and conversations share the sequence)."""
    return int(cur.one(_NEXT_ID)[0])


def insert_user(
    cur: ShardCursor, user_id: int, handle: str, display_name: str, password_hash: str
) -> UserRow | None:
    """Insert a user; None when the handle is taken."""
    return cur.run(
        _INSERT_USER, (user_id, handle, display_name, password_hash)
    ).fetchone()


def by_id(cur: ShardCursor, user_id: int) -> UserRow | None:
    return cur.run(_BY_ID, (user_id,)).fetchone()


def by_ids(cur: ShardCursor, user_ids: list[int]) -> list[UserRow]:
    return cur.run(_BY_IDS, (user_ids,)).fetchall()


def by_handle(cur: ShardCursor, handle: str) -> UserRow | None:
    return cur.run(_BY_HANDLE, (handle,)).fetchone()


def credentials(cur: ShardCursor, handle: str) -> tuple[int, str] | None:
    return cur.run(_CREDENTIALS, (handle,)).fetchone()


def set_password_hash(cur: ShardCursor, user_id: int, password_hash: str) -> None:
    cur.run(_SET_HASH, (password_hash, user_id))


def password_hash(cur: ShardCursor, user_id: int) -> str | None:
    row: Any = cur.run(_HASH_BY_ID, (user_id,)).fetchone()
    return str(row[0]) if row else None


def set_display_name(
    cur: ShardCursor, user_id: int, display_name: str
) -> UserRow | None:
    return cur.run(_SET_DISPLAY_NAME, (display_name, user_id)).fetchone()


def _like_prefix(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def search(
    cur: ShardCursor, query: str, limit: int, hidden: list[int]
) -> list[UserRow]:
    """Users whose handle or display name starts with `query` (any case), the
    exact handle first; `hidden` user ids are left out."""
    q = query.lower()
    return cur.run(
        _SEARCH,
        {"q": q, "prefix": _like_prefix(q), "hidden": hidden, "limit": limit},
    ).fetchall()


def ensure_user_state(cur: ShardCursor, user_id: int) -> None:
    """Create the user's event counter row on the user's shard (idempotent)."""
    cur.run(_INSERT_USER_STATE, (user_id,))
