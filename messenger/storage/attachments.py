"""Attachment metadata (attachment's shard: id % N) and the links that decide who
may fetch one (the conversations' shards)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from messenger.models import Attachment
from messenger.storage.pools import ShardCursor

_COLUMNS = (
    "attachment_id, uploader_id, content_type, size, filename, sha256, width, "
    "height, created_at"
)

_INSERT = f"""
INSERT INTO {{s}}.attachments
    (attachment_id, uploader_id, content_type, size, filename, sha256, width, height)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
RETURNING {_COLUMNS}
"""

_GET = f"SELECT {_COLUMNS} FROM {{s}}.attachments WHERE attachment_id = %s"

_GET_MANY = f"SELECT {_COLUMNS} FROM {{s}}.attachments WHERE attachment_id = ANY(%s)"

_LINK = """
INSERT INTO {s}.attachment_links (attachment_id, conversation_id)
SELECT a, %s FROM unnest(%s::bigint[]) AS a
ON CONFLICT (attachment_id, conversation_id) DO UPDATE SET created_at = now()
"""

_LINKED_CONVERSATIONS = """
SELECT conversation_id FROM {s}.attachment_links WHERE attachment_id = %s
ORDER BY conversation_id
"""

# A live message of one of these conversations carries the attachment, and the
# user is a member there now (message_attachments rows go with a deletion).
_CARRIED_FOR_MEMBER = """
SELECT 1 FROM {s}.message_attachments ma
JOIN {s}.members m
  ON m.conversation_id = ma.conversation_id AND m.user_id = %(u)s
WHERE ma.attachment_id = %(a)s AND ma.conversation_id = ANY(%(cs)s)
LIMIT 1
"""

_CARRIED_ANYWHERE = """
SELECT DISTINCT attachment_id FROM {s}.message_attachments
WHERE attachment_id = ANY(%(a)s) AND conversation_id = ANY(%(cs)s)
"""

# Collector candidates: old enough, and no send naming them in the last hour (a
# send in flight links first, then stores its message).
_STALE = f"""
SELECT {_COLUMNS} FROM {{s}}.attachments a
WHERE a.created_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM {{s}}.attachment_links l
                  WHERE l.attachment_id = a.attachment_id
                    AND l.created_at >= %(link_cutoff)s)
ORDER BY a.attachment_id
LIMIT %(limit)s
"""

_LINKS_OF = """
SELECT attachment_id, conversation_id FROM {s}.attachment_links
WHERE attachment_id = ANY(%s)
"""

_DELETE = """
DELETE FROM {s}.attachments a
WHERE a.attachment_id = %(a)s
  AND NOT EXISTS (SELECT 1 FROM {s}.attachment_links l
                  WHERE l.attachment_id = a.attachment_id
                    AND l.created_at >= %(link_cutoff)s)
RETURNING 1
"""

_SHA_IN_USE = "SELECT 1 FROM {s}.attachments WHERE sha256 = %s LIMIT 1"


def _attachment(row: Sequence[object]) -> Attachment:
    return Attachment(*row)  # type: ignore[arg-type]


def insert(
    cur: ShardCursor,
    attachment_id: int,
    uploader_id: int,
    content_type: str,
    size: int,
    filename: str,
    sha256: str,
    width: int | None,
    height: int | None,
) -> Attachment:
    return _attachment(
        cur.one(
            _INSERT,
            (
                attachment_id,
                uploader_id,
                content_type,
                size,
                filename,
                sha256,
                width,
                height,
            ),
        )
    )


def get(cur: ShardCursor, attachment_id: int) -> Attachment | None:
    row = cur.run(_GET, (attachment_id,)).fetchone()
    return None if row is None else _attachment(row)


def get_many(cur: ShardCursor, attachment_ids: list[int]) -> list[Attachment]:
    return [_attachment(r) for r in cur.run(_GET_MANY, (attachment_ids,)).fetchall()]


def link(cur: ShardCursor, attachment_ids: list[int], conversation_id: int) -> None:
    """Record that these attachments are being sent into a conversation."""
    cur.run(_LINK, (conversation_id, attachment_ids))


def linked_conversations(cur: ShardCursor, attachment_id: int) -> list[int]:
    return [r[0] for r in cur.run(_LINKED_CONVERSATIONS, (attachment_id,)).fetchall()]


def carried_for_member(
    cur: ShardCursor, attachment_id: int, conversation_ids: list[int], user_id: int
) -> bool:
    """Whether a live message of these conversations (one shard) carries the
    attachment and user_id is a member there."""
    row = cur.run(
        _CARRIED_FOR_MEMBER, {"a": attachment_id, "cs": conversation_ids, "u": user_id}
    ).fetchone()
    return row is not None


def carried(
    cur: ShardCursor, attachment_ids: list[int], conversation_ids: list[int]
) -> set[int]:
    """Those of attachment_ids a live message of these conversations carries."""
    rows = cur.run(
        _CARRIED_ANYWHERE, {"a": attachment_ids, "cs": conversation_ids}
    ).fetchall()
    return {r[0] for r in rows}


def stale(
    cur: ShardCursor, cutoff: datetime, link_cutoff: datetime, limit: int
) -> list[Attachment]:
    rows = cur.run(
        _STALE, {"cutoff": cutoff, "link_cutoff": link_cutoff, "limit": limit}
    ).fetchall()
    return [_attachment(r) for r in rows]


def links_of(cur: ShardCursor, attachment_ids: list[int]) -> dict[int, list[int]]:
    result: dict[int, list[int]] = {a: [] for a in attachment_ids}
    for attachment_id, conversation_id in cur.run(
        _LINKS_OF, (attachment_ids,)
    ).fetchall():
        result[attachment_id].append(conversation_id)
    return result


def delete(cur: ShardCursor, attachment_id: int, link_cutoff: datetime) -> bool:
    """Delete an attachment's row unless a send named it since link_cutoff."""
    row = cur.run(_DELETE, {"a": attachment_id, "link_cutoff": link_cutoff})
    return row.fetchone() is not None


def sha_in_use(cur: ShardCursor, sha256: str) -> bool:
    """Whether an attachment of this shard has these bytes."""
    return cur.run(_SHA_IN_USE, (sha256,)).fetchone() is not None
