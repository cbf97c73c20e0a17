"""Push notifications for members with no live poll: who gets one, and queueing it.

After a fan-out (`enqueue`, an after-fan-out hook connected by
messenger/bootstrap.py), each message is queued for every member other than its
sender who may have devices and is not online. Messages to one member in one
conversation are coalesced: the first schedules a batch due
`push_coalesce_secs` later, the next ones join it, and the push worker
(workers/pusher.py) turns the due batch into one job and one push per device.

Queueing never fails a send and reads no database: Redis trouble is logged and
counted, and that push is lost (the message itself is durable and reaches the
member's next poll). What the member asked not to be pushed (a muted
conversation, a blocked sender) is read on the member's shard when the job is
delivered (`recipient`): at its latest, and where a database outage only delays
the push (the worker retries) instead of losing it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import gevent
import redis

from messenger import metrics, runtime
from messenger.backoff import Backoff
from messenger.models import Device, Message
from messenger.realtime import keys
from messenger.realtime.presence import PresenceBoard
from messenger.services import presence
from messenger.settings import Settings
from messenger.storage import blocks as block_store
from messenger.storage import conversations as conversation_store
from messenger.storage import devices as device_store
from messenger.storage.events import OutboxRow
from messenger.views import message_json

logger = logging.getLogger(__name__)

# API.md: each body in a push is cut to this many characters.
BODY_PREVIEW_CHARS = 200
# A flood to one offline member keeps only the newest messages of a batch; the
# push says how many it carries, and the app syncs the rest from history.
BATCH_MAX_MESSAGES = 50


# ---- online status ----------------------------------------------------------------


def is_online(user_ids: Iterable[int]) -> set[int]:
    """The users among user_ids that are online (API.md): a /v1/events call of
    theirs is held now, or was answered less than the grace window (30 s) ago.

    The rule of services/presence.lookup, without its peer check: last poll
    activity from Redis (refreshed by every worker while it holds a poll), this
    worker's notes not yet written, and this worker's held polls.

    Raises:
        redis.RedisError: Redis did not answer (callers degrade).
    """
    ids = list(dict.fromkeys(user_ids))
    if not ids:
        return set()
    rt = runtime.get()
    seen = PresenceBoard(rt.redis).last_seen(ids)
    tracker = presence.tracker()
    noted = dict(tracker.notes) if tracker is not None else {}
    cutoff = time.time() - rt.settings.presence_grace_secs
    return {
        user_id
        for user_id in ids
        if rt.hub.is_holding(user_id)
        or max(seen.get(user_id, 0.0), noted.get(user_id, 0.0)) > cutoff
    }


# ---- queueing ---------------------------------------------------------------------


def preview(message: Message) -> dict[str, Any]:
    """A Message as it appears in a push: its body cut to 200 characters."""
    item = message_json(message)
    item["body"] = item["body"][:BODY_PREVIEW_CHARS]
    return item


def build_push(
    user_id: int, conversation_id: int, messages: list[dict[str, Any]]
) -> dict[str, Any]:
    """The body of a push (API.md), from previews in seq order."""
    return {
        "type": "messages",
        "user_id": user_id,
        "conversation_id": conversation_id,
        "sender_id": messages[-1]["sender_id"],
        "count": len(messages),
        "messages": messages,
    }


def enqueue(rows: list[OutboxRow]) -> int:
    """Queue pushes for the messages among rows (an after-fan-out hook).

    Returns how many (member, conversation) batches were added to. Never raises:
    while Redis is down the pushes are held in this process (`held`) and queued
    once it answers again.
    """
    # (member, conversation) → (sender, push item) in seq order.
    items: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)
    for row in rows:
        message = row.message
        if row.kind != "message" or message is None:
            continue
        item = json.dumps(preview(message), separators=(",", ":"), ensure_ascii=False)
        for user_id in row.recipients:
            if user_id != message.sender_id:
                items[(user_id, row.conversation_id)].append((message.sender_id, item))
    if not items:
        return 0
    # While anything is held, new pushes go behind it: each batch keeps its
    # seq order.
    if not held and runtime.get().hub.redis_ok:
        queued = _queue(items)
        if queued is not None:
            return queued
    held.hold(items)
    return 0


def _queue(items: dict[tuple[int, int], list[tuple[int, str]]]) -> int | None:
    """Queue the batches whose member has devices and is not online; how many,
    or None when Redis failed (nothing of it is then half-queued: one MULTI)."""
    rt = runtime.get()
    try:
        users = sorted({user_id for user_id, _ in items})
        wanted = _with_devices(rt.redis, users)
        wanted -= is_online(wanted)
        batches = {
            key: [item for _, item in found]
            for key, found in items.items()
            if key[0] in wanted
        }
        if batches:
            _add(rt.redis, batches, rt.settings)
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="push_enqueue").inc()
        logger.warning("push: %d pushes not queued yet: %s", len(items), exc)
        return None
    metrics.PUSH_ENQUEUED.inc(len(batches))
    return len(batches)


# Pushes held while Redis is down, per process, at most this many (member,
# conversation) batches: past it the oldest are dropped (logged and counted),
# as the queue itself drops past its bound.
HELD_BATCHES_MAX = 10_000
# How often the holder looks whether Redis is back.
HELD_CHECK_SECS = 0.25


class HeldPushes:
    """Pushes that met Redis down, kept in order until it answers again, then
    queued by a greenlet of their own (started with the first one held, ended
    when none is left). A process that dies meanwhile loses them, as it would
    lose a push it was about to queue; the messages themselves are durable."""

    def __init__(self) -> None:
        self._items: dict[tuple[int, int], list[tuple[int, str]]] = {}
        self._queuer: gevent.Greenlet | None = None

    def __len__(self) -> int:
        return len(self._items)

    def hold(self, items: dict[tuple[int, int], list[tuple[int, str]]]) -> None:
        self._merge(items)
        if self._queuer is None or self._queuer.dead:
            self._queuer = gevent.spawn(self._queue_when_back)

    def _merge(self, items: dict[tuple[int, int], list[tuple[int, str]]]) -> None:
        """Append items behind what is held, within the bounds."""
        for key, found in items.items():
            batch = self._items.setdefault(key, [])
            batch.extend(found)
            del batch[:-BATCH_MAX_MESSAGES]
        dropped = 0
        while len(self._items) > HELD_BATCHES_MAX:
            del self._items[next(iter(self._items))]
            dropped += 1
        if dropped:
            metrics.PUSH_DELIVERIES.labels(outcome="dropped").inc(dropped)
            logger.warning("push: %d held batches dropped (Redis down)", dropped)

    def clear(self) -> None:
        self._items.clear()
        if self._queuer is not None:
            self._queuer.kill(block=False)
            self._queuer = None

    def _queue_when_back(self) -> None:
        retry = Backoff(HELD_CHECK_SECS, 5.0)
        while self._items:
            gevent.sleep(HELD_CHECK_SECS)
            if not runtime.get().hub.redis_ok:
                continue
            items, self._items = self._items, {}
            if _queue(items) is None:
                # Back in front of whatever was held meanwhile, in order.
                newer, self._items = self._items, items
                self._merge(newer)
                gevent.sleep(retry.failed())
                continue
            retry.reset()
            logger.info("push: %d held batches queued", len(items))


held = HeldPushes()


@dataclass(frozen=True)
class Recipient:
    """Where a due push goes and what it still carries."""

    devices: list[Device]
    messages: list[dict[str, Any]]


def recipient(
    user_id: int,
    conversation_id: int,
    messages: list[dict[str, Any]],
    device_id: int | None = None,
) -> Recipient:
    """A push job's recipient as of now, read on the user's shard in one
    connection: the user's devices (only device_id's for a job retried for one
    device), and the messages the user still wants pushed: none while the
    conversation is muted, none from a sender the user blocked (API.md).

    Raises:
        Unavailable: the user's shard is down (the worker retries the job).
    """
    senders = sorted({int(m["sender_id"]) for m in messages})
    with runtime.get().router.on_user(
        user_id, "push_recipient", transaction=False
    ) as cur:
        found = device_store.of_user(cur, user_id)
        if device_id is not None:
            found = [d for d in found if d.device_id == device_id]
        if not found:
            return Recipient([], [])
        if conversation_store.muted_among(cur, [user_id], [conversation_id]):
            return Recipient(found, [])
        blocked = {b for _, b in block_store.pairs_among(cur, [user_id], senders)}
    return Recipient(found, [m for m in messages if int(m["sender_id"]) not in blocked])


def _with_devices(client: redis.Redis, user_ids: list[int]) -> set[int]:
    pipe = client.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.exists(keys.push_devices_flag(user_id))
    return {u for u, found in zip(user_ids, pipe.execute(), strict=True) if found}


# The queue is bounded: past this many scheduled batches, new ones are dropped
# (logged and counted; the messages themselves are stored and reach the next
# poll). Pushes are a hint, and a backlog this deep is an outage, not a queue.
PUSH_BATCHES_MAX = 100_000
# Each user's share of it: new batches per share window (keys.py). A user in
# thousands of busy conversations gets pushes for the first ones, not a queue
# that holds everyone else's back.
PUSH_USER_BATCHES_MAX = 500

# Schedules a batch (its first message just appended) unless the queue or the
# user's share is full, in which case the batch is dropped.
# KEYS: due, pending key, share key. ARGV: member, due time, queue max, share
# max, share window. Returns 1 when scheduled (or already), 0 when dropped.
_SCHEDULE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[2]); return 0
end
local n = redis.call('INCR', KEYS[3])
if n == 1 then redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5])) end
if n > tonumber(ARGV[4]) then redis.call('DEL', KEYS[2]); return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


def _add(
    client: redis.Redis,
    batches: dict[tuple[int, int], list[str]],
    settings: Settings,
) -> None:
    """Append to each pending batch; the first message of a batch schedules it,
    within the queue's bound and the user's share (see _SCHEDULE)."""
    due = time.time() + settings.push_coalesce_secs
    # One MULTI: the worker's promotion never sees a batch without its due entry.
    # EVAL, not EVALSHA through a registered script: a Redis Cluster pipeline
    # cannot load a script (redis-py blocks evalsha there); the text is small.
    pipe = client.pipeline(transaction=True)
    for (user_id, conversation_id), items in batches.items():
        key = keys.push_pending(user_id, conversation_id)
        pipe.rpush(key, *items)
        pipe.ltrim(key, -BATCH_MAX_MESSAGES, -1)
        pipe.expire(key, keys.PUSH_PENDING_TTL_SECS)
        pipe.execute_command(
            "EVAL",
            _SCHEDULE,
            3,
            keys.PUSH_DUE,
            key,
            keys.push_share(user_id),
            f"{user_id}:{conversation_id}",
            due,
            PUSH_BATCHES_MAX,
            PUSH_USER_BATCHES_MAX,
            keys.PUSH_SHARE_WINDOW_SECS,
        )
    results = pipe.execute()
    dropped = [b for b, r in zip(batches, results[3::4], strict=True) if not r]
    if dropped:
        metrics.PUSH_DELIVERIES.labels(outcome="dropped").inc(len(dropped))
        logger.warning(
            "push: %d batches dropped (queue or user share full), e.g. user %s",
            len(dropped),
            dropped[0][0],
        )
