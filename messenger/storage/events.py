"""Per-user event streams and mailboxes (user's shard), and the outbox rows that
feed them (conversation's shard).

The fan-out writes for one physical database are collected in a FanoutBatch and
sent as one multi-statement round trip inside one transaction.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from messenger.models import Event, Message
from messenger.storage.messages import message_columns, message_from_row
from messenger.storage.pools import ShardCursor
from messenger.views import attachment_json

# Locks the recipients' counter rows in one global order (schemas sorted, then
# user ids), so two fan-outs touching the same users can never deadlock.
_LOCK_STATES = """
SELECT 1 FROM {s}.user_state WHERE user_id = ANY(%(u)s) ORDER BY user_id FOR UPDATE;
"""

# Which of these users already hold an event of these origins (outbox rows).
_APPLIED = """
SELECT user_id, origin FROM {s}.events
WHERE user_id = ANY(%(u)s) AND origin = ANY(%(o)s)
"""

# A message's fan-out on one shard: sql/shard/0004_fanout_function.sql (a
# function, so its plans are cached per connection). It locks the recipients'
# counters in user-id order itself.
_FANOUT_MESSAGE = """
SELECT {s}.fanout_message(%(u)s::bigint[], %(c)s, %(seq)s, %(sender)s, %(cmid)s,
                          %(body)s, %(at)s, %(origin)s, %(reply_to)s,
                          %(edited_at)s, %(deleted)s, %(reactions)s::jsonb,
                          %(attachments)s::jsonb);
"""

# A message_updated event brings every recipient's mailbox copy to the message as
# it is now (so search sees the current text). Outbox order applies the changes
# of one message in the order they were made.
_UPDATE_MAILBOX = """
UPDATE {s}.mailbox
SET body = %(body)s, reply_to = %(reply_to)s, edited_at = %(edited_at)s,
    deleted = %(deleted)s, reactions = %(reactions)s::jsonb,
    attachments = %(attachments)s::jsonb
WHERE user_id = ANY(%(u)s) AND conversation_id = %(c)s AND seq = %(seq)s;
"""

# After a message's fan-out on one shard: each recipient's new event id, as a
# NOTICE (sql/shard/0050_fanout_event_ids.sql; read by collect_event_ids).
_REPORT_IDS = """
SELECT {s}.fanout_event_ids(%(u)s::bigint[], %(origin)s);
"""
_EVENT_IDS_NOTICE = "event_ids "

# A member joining as a message request (someone else opened the conversation
# or added it) is in %(request)s.
_JOIN = """
INSERT INTO {s}.user_conversations (user_id, conversation_id, last_activity_at, request)
SELECT u, %(c)s, now(), u = ANY(%(request)s::bigint[])
FROM unnest(%(join)s::bigint[]) AS u
ON CONFLICT (user_id, conversation_id) DO NOTHING;
"""

# A Conversation in an event is shared by its recipients; each one's own
# settings (API.md: request, muted_until, archived, "for the caller") are
# stamped in from its list row as the event is stored.
_OWN_SETTINGS = """jsonb_build_object(
    'request', uc.request,
    'archived', uc.archived,
    'muted_until',
    CASE WHEN uc.muted_until IS NULL OR uc.muted_until <= now() THEN 'null'::jsonb
         WHEN uc.muted_until = 'infinity' THEN '"forever"'::jsonb
         ELSE to_jsonb(to_char(uc.muted_until AT TIME ZONE 'UTC',
                               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')) END)"""

# An event to one user about its own settings (member_settings), written in the
# transaction that changes them, on the user's shard.
_OWN_EVENT = """
WITH st AS (
    UPDATE {s}.user_state SET last_event_id = last_event_id + 1
    WHERE user_id = %(u)s RETURNING user_id, last_event_id
)
INSERT INTO {s}.events (user_id, event_id, type, conversation_id, origin, payload)
SELECT user_id, last_event_id, %(type)s, %(c)s,
       'u:' || %(c)s || ':' || last_event_id, %(payload)s::jsonb
FROM st
RETURNING event_id
"""

# Non-message events are deduplicated by their origin (the outbox row), and,
# like messages, reach only users whose list row exists (joins run before).
_FANOUT_EVENT = (
    """
WITH fresh AS (
    SELECT u AS user_id FROM unnest(%(u)s::bigint[]) AS u
    WHERE NOT EXISTS (SELECT 1 FROM {s}.events e
                      WHERE e.user_id = u AND e.origin = %(origin)s)
      AND EXISTS (SELECT 1 FROM {s}.user_conversations uc
                  WHERE uc.user_id = u AND uc.conversation_id = %(c)s)
), st AS (
    UPDATE {s}.user_state s SET last_event_id = s.last_event_id + 1
    FROM fresh WHERE s.user_id = fresh.user_id
    RETURNING s.user_id, s.last_event_id
)
INSERT INTO {s}.events (user_id, event_id, type, conversation_id, origin, payload)
SELECT st.user_id, st.last_event_id, %(type)s, %(c)s, %(origin)s,
       CASE WHEN %(type)s = 'conversation_updated'
            THEN jsonb_set(%(payload)s::jsonb, '{{conversation}}',
                           (%(payload)s::jsonb -> 'conversation') || """
    + _OWN_SETTINGS
    + """)
            ELSE %(payload)s::jsonb END
FROM st JOIN {s}.user_conversations uc
  ON uc.user_id = st.user_id AND uc.conversation_id = %(c)s;
"""
)

_TOUCH = """
UPDATE {s}.user_conversations SET last_activity_at = GREATEST(last_activity_at, now())
WHERE user_id = ANY(%(u)s) AND conversation_id = %(c)s;
"""

_LEAVE = """
DELETE FROM {s}.user_conversations
WHERE user_id = ANY(%(leave)s) AND conversation_id = %(c)s;
"""

# The caller's position checks and the page, in one round trip.
_READ = f"""
SELECT s.last_event_id, s.trimmed_through,
       e.event_id, e.type, e.conversation_id, e.payload, {message_columns("mb")}
FROM {{s}}.user_state s
LEFT JOIN LATERAL (
    SELECT event_id, type, conversation_id, seq, payload FROM {{s}}.events
    WHERE user_id = s.user_id AND event_id > %(after)s
    ORDER BY event_id LIMIT %(limit)s
) e ON true
LEFT JOIN {{s}}.mailbox mb
  ON e.type = 'message' AND mb.user_id = s.user_id
 AND mb.conversation_id = e.conversation_id AND mb.seq = e.seq
WHERE s.user_id = %(u)s
ORDER BY e.event_id
"""

_HEAD = "SELECT last_event_id FROM {s}.user_state WHERE user_id = %s"

# The fan-out transaction on the conversation's database commits durably (the
# server's synchronous_commit, on by default): its commit makes the events of
# that database's recipients visible, and a poll may hand them out at once. An
# asynchronous commit lost in a crash would take back events a client already
# saw, and their ids would go to other events (issue 14). Work on other
# databases is committed before the outbox rows are deleted here.
_PENDING = f"""
SELECT pg_advisory_xact_lock(%(c)s);
SELECT o.outbox_id, o.kind, o.recipients, o.payload, o.created_at, o.delivered,
       {message_columns("m")}
FROM {{s}}.outbox o
LEFT JOIN {{s}}.messages m
  ON o.kind = 'message' AND m.conversation_id = o.conversation_id AND m.seq = o.seq
WHERE o.conversation_id = %(c)s
ORDER BY o.outbox_id
FOR UPDATE OF o
"""

_DELETE_OUTBOX = "DELETE FROM {s}.outbox WHERE outbox_id = ANY(%s)"

# Progress of a fan-out done server by server (sql/shard/0040_outbox_progress.sql).
# Under the conversation's fan-out lock, as _PENDING: whoever locks outbox rows
# holds it first, so two fan-outs never lock them in different orders.
_MARK_DELIVERED = """
SELECT pg_advisory_xact_lock(%(c)s);
UPDATE {s}.outbox
SET delivered = ARRAY(SELECT DISTINCT unnest(delivered || %(u)s::bigint[]))
WHERE outbox_id = ANY(%(ids)s) AND NOT recipients <@ delivered
"""
_DELETE_DELIVERED = """
DELETE FROM {s}.outbox WHERE outbox_id = ANY(%s) AND recipients <@ delivered
"""

_INSERT_OUTBOX = """
INSERT INTO {s}.outbox (conversation_id, kind, recipients, payload)
VALUES (%s, %s, %s, %s) RETURNING outbox_id
"""

_STALE_OUTBOX = """
SELECT DISTINCT conversation_id, min(created_at) OVER (PARTITION BY conversation_id)
FROM {s}.outbox WHERE created_at < now() - make_interval(secs => %s)
"""

# The hourly trim goes in short batches, each its own transaction: the users of
# up to `rows` old events, their counter rows locked in user-id order (the
# fan-out's order, so the two can't deadlock), then those users' old events
# (at most `rows` of them) deleted and their trimmed_through moved up. A batch
# holds its locks for milliseconds and stays far below any statement timeout.
_TRIM_LOCK_USERS = """
SELECT s.user_id FROM {s}.user_state s
WHERE s.user_id IN (SELECT e.user_id FROM {s}.events e
                    WHERE e.created_at < %(cutoff)s LIMIT %(rows)s)
ORDER BY s.user_id
FOR UPDATE OF s
"""

_TRIM_BATCH = """
WITH gone AS (
    DELETE FROM {s}.events WHERE ctid IN (
        SELECT ctid FROM {s}.events
        WHERE user_id = ANY(%(users)s) AND created_at < %(cutoff)s
        LIMIT %(rows)s)
    RETURNING user_id, event_id
), top AS (
    SELECT user_id, max(event_id) AS event_id FROM gone GROUP BY user_id
), moved AS (
    UPDATE {s}.user_state s
    SET trimmed_through = GREATEST(s.trimmed_through, top.event_id)
    FROM top WHERE s.user_id = top.user_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM moved)
"""


@dataclass(frozen=True)
class OutboxRow:
    """A change waiting to reach its recipients' event streams.

    `payload` for non-message kinds: {"event": {...API fields}, "join": [ids],
    "request": [ids joining as message requests], "leave": [ids]}; update
    services/fanout.py when adding a key.
    """

    outbox_id: int
    conversation_id: int
    kind: str
    recipients: tuple[int, ...]
    payload: dict[str, Any]
    created_at: datetime
    message: Message | None
    # Recipients whose streams already hold this row's event (a fan-out that
    # finished some servers and not others).
    delivered: frozenset[int] = frozenset()

    @property
    def undelivered(self) -> tuple[int, ...]:
        return tuple(u for u in self.recipients if u not in self.delivered)


@dataclass(frozen=True)
class Page:
    head: int
    trimmed_through: int
    events: list[Event]


class FanoutBatch:
    """Statements for one physical database, sent in one round trip."""

    def __init__(self, cur: ShardCursor) -> None:
        self.cur = cur
        self.parts: list[bytes] = []

    def _add(self, sql: str, schema: str, params: dict[str, Any]) -> None:
        self.parts.append(self.cur.mogrify(sql.format(s=schema), params))

    def lock(self, schema: str, user_ids: Sequence[int]) -> None:
        self._add(_LOCK_STATES, schema, {"u": sorted(user_ids)})

    def message(
        self,
        schema: str,
        user_ids: Sequence[int],
        message: Message,
        *,
        report_ids: bool = False,
    ) -> None:
        """A message's fan-out on one shard; with report_ids, the recipients' new
        event ids come back as a notice (see collect_event_ids)."""
        params = {
            "u": list(user_ids),
            "c": message.conversation_id,
            "seq": message.seq,
            "sender": message.sender_id,
            "cmid": message.client_msg_id,
            "body": message.body,
            "at": message.created_at,
            "origin": message_origin(message),
            "reply_to": message.reply_to,
            "edited_at": message.edited_at,
            "deleted": message.deleted,
            "reactions": json.dumps(message.reactions),
            "attachments": json.dumps(
                [attachment_json(a) for a in message.attachments]
            ),
        }
        self._add(_FANOUT_MESSAGE, schema, params)
        if report_ids:
            self._add(_REPORT_IDS, schema, params)

    def update_mailbox(
        self, schema: str, user_ids: Sequence[int], message: dict[str, Any]
    ) -> None:
        """Bring the users' copies to `message` (its JSON, as API.md shows it)."""
        self._add(
            _UPDATE_MAILBOX,
            schema,
            {
                "u": list(user_ids),
                "c": message["conversation_id"],
                "seq": message["seq"],
                "body": message["body"],
                "reply_to": message["reply_to"],
                "edited_at": message["edited_at"],
                "deleted": message["deleted"],
                "reactions": json.dumps(message["reactions"]),
                "attachments": json.dumps(message["attachments"]),
            },
        )

    def join(
        self,
        schema: str,
        conversation_id: int,
        user_ids: Sequence[int],
        requests: Sequence[int] = (),
    ) -> None:
        self._add(
            _JOIN,
            schema,
            {"c": conversation_id, "join": list(user_ids), "request": list(requests)},
        )

    def event(
        self,
        schema: str,
        user_ids: Sequence[int],
        conversation_id: int,
        outbox_id: int,
        event_type: str,
        fields: dict[str, Any],
        touch: bool,
    ) -> None:
        params = {
            "u": list(user_ids),
            "c": conversation_id,
            "type": event_type,
            "origin": outbox_origin(conversation_id, outbox_id),
            "payload": json.dumps(fields, separators=(",", ":")),
        }
        self._add(_FANOUT_EVENT, schema, params)
        if touch:
            self._add(_TOUCH, schema, params)

    def leave(self, schema: str, conversation_id: int, user_ids: Sequence[int]) -> None:
        self._add(_LEAVE, schema, {"c": conversation_id, "leave": list(user_ids)})

    def sql(self) -> bytes:
        """The statements collected, ready to send (e.g. with a COMMIT behind)."""
        return b"\n".join(self.parts)

    def execute(self) -> None:
        """Send the statements in one round trip."""
        if self.parts:
            self.cur.execute(self.sql())
            self.parts = []


def message_origin(message: Message) -> str:
    """The origin of a message's events (their idempotency key)."""
    return f"m:{message.conversation_id}:{message.seq}"


def outbox_origin(conversation_id: int, outbox_id: int) -> str:
    """The origin of a non-message outbox row's events (their idempotency key)."""
    return f"o:{conversation_id}:{outbox_id}"


def origin_of(row: OutboxRow) -> str:
    """The origin of the events an outbox row fans out."""
    if row.message is not None:
        return message_origin(row.message)
    return outbox_origin(row.conversation_id, row.outbox_id)


def lock_and_find_applied(
    cur: ShardCursor,
    users_by_schema: dict[str, Sequence[int]],
    origins: Sequence[str],
) -> set[tuple[int, str]]:
    """Lock the users' event counters (schemas in sorted order, users in id
    order: the fan-out's lock order) and return the (user, origin) pairs among
    them whose event is already stored, in one round trip.

    Under those locks, a pair is stored exactly when that outbox row's writes
    for that user are done (a fan-out writes each user's part in one
    transaction), which the counters' lock then keeps true.
    """
    locks, finds = [], []
    for schema in sorted(users_by_schema):
        users = sorted(users_by_schema[schema])
        locks.append(cur.mogrify(_LOCK_STATES.format(s=schema), {"u": users}))
        finds.append(
            cur.mogrify(
                _APPLIED.format(s=schema), {"u": users, "o": list(origins)}
            ).strip()
        )
    if not locks:
        return set()
    cur.execute(
        b"\n".join(locks) + b"\n" + b" UNION ALL ".join(b"(" + f + b")" for f in finds)
    )
    return {(int(user_id), str(origin)) for user_id, origin in cur.fetchall()}


@contextmanager
def collect_event_ids(cur: ShardCursor) -> Iterator[dict[str, dict[int, int]]]:
    """origin (message_origin) → user id → new event id, as reported by the
    fan-outs run in the block (FanoutBatch.message(report_ids=True)); complete
    once the block ends.

    psycopg2 keeps only the last 50 notices in its list; a fan-out to a group can
    send one per shard schema, so the block collects into a queue of its own.
    """
    found: dict[str, dict[int, int]] = {}
    conn = cur.connection
    saved = conn.notices
    conn.notices = deque()
    try:
        yield found
        for notice in conn.notices:
            text = notice.partition(":")[2].strip()
            if not text.startswith(_EVENT_IDS_NOTICE):
                continue
            origin, _, pairs = text[len(_EVENT_IDS_NOTICE) :].partition(" ")
            ids = found.setdefault(origin, {})
            for pair in pairs.split(","):
                user_id, _, event_id = pair.partition(":")
                ids[int(user_id)] = int(event_id)
    finally:
        conn.notices = saved


def pending_outbox(cur: ShardCursor, conversation_id: int) -> list[OutboxRow]:
    """Lock the conversation's fan-out (transaction-scoped) and list its outbox.

    The advisory lock makes fan-outs of one conversation run one at a time, in
    outbox order, so every member sees messages in seq order.
    """
    rows = cur.run(_PENDING, {"c": conversation_id}).fetchall()
    result = []
    for outbox_id, kind, recipients, payload, created_at, delivered, *columns in rows:
        message = None
        if kind == "message":
            if columns[0] is None:  # cannot happen: message and outbox share a commit
                continue
            message = message_from_row(conversation_id, columns)
        result.append(
            OutboxRow(
                outbox_id,
                conversation_id,
                kind,
                tuple(recipients),
                payload or {},
                created_at,
                message,
                frozenset(delivered or ()),
            )
        )
    return result


def delete_outbox(cur: ShardCursor, outbox_ids: list[int]) -> None:
    cur.run(_DELETE_OUTBOX, (outbox_ids,))


def mark_delivered(
    cur: ShardCursor, conversation_id: int, outbox_ids: list[int], user_ids: list[int]
) -> None:
    """Record that these users' streams hold the events of these outbox rows
    (taking the conversation's fan-out lock, if not held yet)."""
    cur.run(
        _MARK_DELIVERED,
        {"c": conversation_id, "ids": outbox_ids, "u": sorted(user_ids)},
    )


def delete_delivered(cur: ShardCursor, outbox_ids: list[int]) -> int:
    """Delete the rows (of these) that reached every recipient; how many."""
    cur.run(_DELETE_DELIVERED, (outbox_ids,))
    return cur.rowcount


def insert_outbox(
    cur: ShardCursor,
    conversation_id: int,
    kind: str,
    recipients: Sequence[int],
    payload: dict[str, Any],
) -> int:
    """Queue a non-message event in the same transaction as the change it reports."""
    row = cur.one(
        _INSERT_OUTBOX,
        (
            conversation_id,
            kind,
            list(recipients),
            json.dumps(payload, separators=(",", ":"), default=str),
        ),
    )
    return int(row[0])


def insert_own_event(
    cur: ShardCursor,
    user_id: int,
    conversation_id: int,
    event_type: str,
    fields: dict[str, Any],
) -> int:
    """Store an event for one user (its own settings changed); its id."""
    row = cur.one(
        _OWN_EVENT,
        {
            "u": user_id,
            "c": conversation_id,
            "type": event_type,
            "payload": json.dumps(fields, separators=(",", ":")),
        },
    )
    return int(row[0])


def read(cur: ShardCursor, user_id: int, after: int, limit: int) -> Page | None:
    """Events after a cursor with the user's head; None if the user has no stream."""
    rows = cur.run(_READ, {"u": user_id, "after": after, "limit": limit}).fetchall()
    if not rows:
        return None
    head, trimmed = rows[0][0], rows[0][1]
    events = []
    for _h, _t, event_id, event_type, conversation_id, payload, *columns in rows:
        if event_id is None:
            continue
        if event_type == "message":
            if columns[0] is None:
                continue  # its mailbox copy is gone; nothing to show
            fields = {"message": message_from_row(conversation_id, columns)}
        else:
            fields = dict(payload or {})
        events.append(Event(event_type, event_id, fields))
    return Page(head, trimmed, events)


def head(cur: ShardCursor, user_id: int) -> int | None:
    """The id of the user's newest event; None if the user has no stream."""
    row = cur.run(_HEAD, (user_id,)).fetchone()
    return int(row[0]) if row else None


@dataclass(frozen=True)
class TrimBatch:
    events_deleted: int
    users_touched: int


def trim_batch(cur: ShardCursor, cutoff: datetime, rows: int) -> TrimBatch:
    """One batch of the trim (see _TRIM_LOCK_USERS), in the caller's transaction:
    at most `rows` events created before cutoff."""
    users = [
        int(r[0])
        for r in cur.run(_TRIM_LOCK_USERS, {"cutoff": cutoff, "rows": rows}).fetchall()
    ]
    if not users:
        return TrimBatch(0, 0)
    deleted, touched = cur.one(
        _TRIM_BATCH, {"cutoff": cutoff, "rows": rows, "users": users}
    )
    return TrimBatch(int(deleted), int(touched))


def stale_outbox_across(
    cur: ShardCursor, schemas: list[str], older_than_secs: float
) -> list[tuple[int, datetime]]:
    """Conversations with outbox rows older than the given age, with their oldest
    row's time, over several shard schemas of one database in one round trip."""
    if not schemas:
        return []
    parts = [
        cur.mogrify(_STALE_OUTBOX.format(s=s), (older_than_secs,)).strip()
        for s in schemas
    ]
    cur.execute(b" UNION ALL ".join(b"(" + p + b")" for p in parts))
    return cur.fetchall()


_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%s)"


def try_lock(cur: ShardCursor, key: int) -> bool:
    """A transaction-scoped advisory lock, or False if another holds it."""
    return bool(cur.one(_TRY_LOCK, (key,))[0])
