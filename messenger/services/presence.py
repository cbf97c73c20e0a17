"""Presence: online / offline with last seen, from held or recent polls.

API.md: a user is online while one of its /v1/events calls is held, and for the
grace window (MESSENGER_PRESENCE_GRACE_SECS, 30 s) after one was answered; this
covers every device and every worker. The gap between two polls is far shorter
than the window, so a polling client never shows as offline between them.

The poll path does no I/O for presence: the poll hooks only note the time in
this worker's memory. One greenlet per worker (the Tracker) then, off the poll
path:
- writes the notes to Redis, and refreshes the users whose polls this worker
  holds, so a held poll keeps its user's last-seen time within the window;
- sweeps users whose last activity fell behind the grace window;
- announces each transition (the Redis board hands each one to exactly one
  worker) as an ephemeral `presence` event to the users who may see it (API.md
  "Who sees whose presence": members of a conversation in which the user is not
  a message request, unless the user blocked them), reading them from
  PostgreSQL in a small greenlet pool at the moment of the transition, so a
  block or an accept counts from the next event on.
Redis trouble is logged and counted (metrics.REDIS_ERRORS) and never reaches a
poll: presence just goes stale until Redis answers again.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import gevent
import gevent.event
import gevent.pool
import redis

from messenger import metrics, runtime
from messenger.errors import Unavailable
from messenger.realtime.presence import PresenceBoard
from messenger.runtime import Runtime
from messenger.storage import blocks as block_store
from messenger.storage import peers as peer_store
from messenger.views import format_time

logger = logging.getLogger(__name__)

ONLINE = "online"
OFFLINE = "offline"

# The tracker refreshes held polls and sweeps this often, in grace windows: a
# user goes offline between grace and grace + tick after its last poll.
TICKS_PER_GRACE = 4
TICK_MAX_SECS = 5.0
TICK_MIN_SECS = 0.05
# After a poll note wakes the tracker it waits this long for more, so a burst of
# polls costs one Redis round trip, not one each, and a client re-polling at once
# (one poll ending, the next starting) costs one write.
FLUSH_GATHER_SECS = 0.1
# A held poll's user is written again once its time in Redis is older than this
# part of the grace window: checked every tick, so it is never older than
# 3/4 of the window, and a held poll never shows offline.
REFRESH_AFTER_GRACE_PART = 0.5
# Announcements run beside the tracker, at most this many at once: each reads
# the user's peers from the databases, whose pools are small and serve requests.
ANNOUNCE_CONCURRENCY = 2
# Transitions waiting to be announced; beyond this (a mass reconnect) the oldest
# are dropped: presence events are best effort, GET /v1/presence stays exact.
ANNOUNCE_BACKLOG_MAX = 10_000


def tick_secs(grace_secs: float) -> float:
    return min(TICK_MAX_SECS, max(TICK_MIN_SECS, grace_secs / TICKS_PER_GRACE))


def presence_event(user_id: int, status: str, last_seen: float) -> dict[str, Any]:
    """The ephemeral event of API.md."""
    return {
        "type": "presence",
        "user_id": user_id,
        "status": status,
        "last_seen": _iso(last_seen),
    }


def _iso(unix_secs: float) -> str:
    return format_time(datetime.fromtimestamp(unix_secs, UTC))


class Tracker:
    """This worker's side of presence: notes, refreshes, sweeps, announcements."""

    def __init__(self, rt: Runtime, board: PresenceBoard) -> None:
        self.rt = rt
        self.board = board
        self.notes: dict[int, float] = {}
        # What this worker last wrote to Redis per user (pruned after a window).
        self.written: dict[int, float] = {}
        self.kick = gevent.event.Event()
        self.announcers = gevent.pool.Pool(ANNOUNCE_CONCURRENCY)
        self.backlog: deque[tuple[int, str, float]] = deque()
        # When the held polls were last refreshed and the online sets last swept
        # (compared with the tick of the current settings at every step).
        self.refreshed_at = 0.0
        self.swept_at = 0.0
        self.stopped = False
        # Steps running now (the loop's, or a test's): notes taken but not written.
        self.stepping = 0
        self._redis_down = False

    # -- the poll path: memory only ------------------------------------------------

    def note(self, user_id: int) -> None:
        """A poll of user_id started or ended now."""
        self.notes[user_id] = time.time()
        self.kick.set()

    # -- the tracker greenlet --------------------------------------------------------

    def run(self) -> None:
        while not self.stopped:
            tick = tick_secs(self.rt.settings.presence_grace_secs)
            if self.kick.wait(tick):
                gevent.sleep(FLUSH_GATHER_SECS)
            self.kick.clear()
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the loop must outlive any failure
                logger.exception("presence step failed")

    def step(self, now: float | None = None) -> None:
        """Flush notes, refresh held users and sweep when due; announce changes."""
        self.stepping += 1
        try:
            self._step(time.time() if now is None else now)
        finally:
            self.stepping -= 1

    def is_idle(self) -> bool:
        """Nothing noted, written or announced is still in flight."""
        return not (self.notes or self.stepping or self.backlog or len(self.announcers))

    def _step(self, now: float) -> None:
        grace = self.rt.settings.presence_grace_secs
        tick = tick_secs(grace)
        notes, self.notes = self.notes, {}
        if now - self.refreshed_at >= tick:
            stale = now - grace * REFRESH_AFTER_GRACE_PART
            for user_id in self.rt.hub.users():
                if self.written.get(user_id, 0.0) <= stale:
                    notes[user_id] = max(notes.get(user_id, 0.0), now)
            self.written = {u: t for u, t in self.written.items() if t > now - grace}
            self.refreshed_at = now
        # A user with a poll held here now is online whatever Redis says, and the
        # refresh above rewrites held users once their time there is half a window
        # old: so a re-poll (an answer and the next poll, noted together; a
        # fan-out to N members is N of them) need not be written again before
        # then. A user whose polls all ended is written: its last activity counts.
        fresh = now - grace * REFRESH_AFTER_GRACE_PART
        hub = self.rt.hub
        notes = {
            u: t
            for u, t in notes.items()
            if not (self.written.get(u, 0.0) > fresh and hub.is_holding(u))
        }
        sweep = now - self.swept_at >= tick
        try:
            came_online = self.board.touch(notes)
            went_offline = self.board.pop_offline(now - grace) if sweep else []
        except redis.RedisError as exc:
            for user_id, at in notes.items():  # keep them for the next try
                self.notes[user_id] = max(self.notes.get(user_id, 0.0), at)
            metrics.REDIS_ERRORS.labels(op="presence").inc()
            if not self._redis_down:
                logger.warning("presence: Redis unavailable (%s); going stale", exc)
            self._redis_down = True
            return
        if self._redis_down:
            logger.info("presence: Redis is back")
            self._redis_down = False
            self.written.clear()  # it may have restarted empty: write all again
        self.written.update(notes)
        if sweep:
            self.swept_at = now
        for user_id in came_online:
            self._queue(user_id, ONLINE, notes[user_id])
        for user_id, last_seen in went_offline:
            self._queue(user_id, OFFLINE, last_seen)

    def _queue(self, user_id: int, status: str, last_seen: float) -> None:
        """Hand a transition to the announcers without ever blocking the loop."""
        if len(self.backlog) >= ANNOUNCE_BACKLOG_MAX:
            dropped = self.backlog.popleft()
            logger.warning("presence: backlog full; not announcing %s", dropped)
        self.backlog.append((user_id, status, last_seen))
        if len(self.announcers) < ANNOUNCE_CONCURRENCY:
            self.announcers.spawn(self._announce_backlog)

    def _announce_backlog(self) -> None:
        while self.backlog:
            user_id, status, last_seen = self.backlog.popleft()
            try:
                self.announce(user_id, status, last_seen)
            except Exception:  # noqa: BLE001 - one failure must not stop the rest
                logger.exception("user %s: presence announcement failed", user_id)

    def announce(self, user_id: int, status: str, last_seen: float) -> None:
        """Send the transition to the waiting polls of the user's peers."""
        try:
            peers = peers_of(user_id)
        except Unavailable:
            logger.warning(
                "user %s: presence %s not announced (database)", user_id, status
            )
            return
        peers.discard(user_id)
        if peers:
            self.rt.waker.wake_users(
                sorted(peers), ephemeral=presence_event(user_id, status, last_seen)
            )
        logger.debug("user %s: %s, told %d peers", user_id, status, len(peers))

    def stop(self) -> None:
        self.stopped = True
        self.kick.set()


# This worker's tracker, set by the composition root (messenger/bootstrap.py): the
# online checks count the polls it has noted but not yet written to Redis.
_tracker: Tracker | None = None


def use_tracker(tracker: Tracker | None) -> None:
    """Make `tracker` the one whose notes the online checks read (None: none)."""
    global _tracker
    _tracker = tracker


def tracker() -> Tracker | None:
    """This worker's tracker, if started (tests drive it with step())."""
    return _tracker


def peers_of(user_id: int) -> set[int]:
    """Who may see user_id's presence (API.md "Who sees whose presence"): the
    members of the conversations in which user_id is not a request, except the
    users user_id blocked (and user_id itself).

    Raises:
        Unavailable: a database needed is down.
    """
    router = runtime.get().router
    with router.on_user(user_id, "presence_conversations", transaction=False) as cur:
        conversation_ids = peer_store.visible_conversation_ids(cur, user_id)
        blocked = {u for u, _at in block_store.blocked_by(cur, user_id)}
    if not conversation_ids:
        return set()
    by_dsn: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for c in conversation_ids:
        by_dsn[router.dsn_of(c)][router.schema_of(c)].append(c)
    found: set[int] = set()
    for dsn, by_schema in by_dsn.items():
        with router.on_dsn(dsn, "presence_peers", transaction=False) as cur:
            found |= peer_store.members_across(cur, by_schema)
    return found - blocked - {user_id}


def visible_to(caller_id: int, user_ids: Iterable[int]) -> set[int]:
    """Which of user_ids the caller may see the presence of: those sharing one of
    the caller's conversations in which they are not a request, and who did not
    block the caller. The caller's own shard says which conversations and who
    blocked it; the asked users' shards say in which they are requests.

    Raises:
        Unavailable: a database needed is down.
    """
    asked = sorted(set(user_ids) - {caller_id})
    if not asked:
        return set()
    router = runtime.get().router
    with router.on_user(caller_id, "presence_caller", transaction=False) as cur:
        conversation_ids = peer_store.conversation_ids(cur, caller_id)
        blockers = block_store.blockers_among(cur, caller_id, asked)
    candidates = [u for u in asked if u not in blockers]
    if not conversation_ids or not candidates:
        return set()
    by_dsn: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for u in candidates:
        by_dsn[router.dsn_of(u)][router.schema_of(u)].append(u)
    found: set[int] = set()
    for dsn, by_schema in by_dsn.items():
        with router.on_dsn(dsn, "presence_shown", transaction=False) as cur:
            found |= peer_store.shown_across(cur, by_schema, conversation_ids)
    return found


def statuses(user_ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
    """Status and last seen (ISO time or None) of each user, with no visibility
    check.

    Raises:
        Unavailable: Redis did not answer.
    """
    rt = runtime.get()
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    try:
        seen = PresenceBoard(rt.redis).last_seen(ids)
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="presence").inc()
        logger.warning("presence lookup: Redis unavailable (%s)", exc)
        raise Unavailable("Presence is unavailable: Redis did not answer.") from None
    now = time.time()
    pending = _tracker.notes if _tracker is not None else {}
    grace = rt.settings.presence_grace_secs
    result: dict[int, tuple[str, str | None]] = {}
    for user_id in ids:
        at = max(seen.get(user_id, 0.0), pending.get(user_id, 0.0))
        if rt.hub.is_holding(user_id):
            at = now
        if at <= 0:
            result[user_id] = (OFFLINE, None)
        else:
            status = ONLINE if now - at < grace else OFFLINE
            result[user_id] = (status, _iso(at))
    return result


def lookup(caller_id: int, user_ids: list[int]) -> dict[int, tuple[str, str | None]]:
    """Status and last seen (ISO time or None) of the asked users the caller may
    see (visible_to), and of the caller itself; others are left out.

    Raises:
        Unavailable: Redis or a database needed is down.
    """
    asked = set(user_ids)
    allowed = visible_to(caller_id, asked)
    if caller_id in asked:
        allowed.add(caller_id)
    return statuses(allowed)


def reveal(user_id: int, viewers: Iterable[int]) -> None:
    """Tell those of `viewers` who may now see user_id's presence (after an
    accept or an unblock, with their polls held) its current status, as a
    `presence` event, instead of leaving them blind until its next change.

    Best effort, like every presence event: a database or Redis failure is
    logged and the event skipped (GET /v1/presence stays exact).
    """
    wanted = set(viewers) - {user_id}
    if not wanted:
        return
    try:
        audience = sorted(peers_of(user_id) & wanted)
        if not audience:
            return
        status, last_seen = statuses([user_id])[user_id]
    except Unavailable:
        logger.warning("user %s: presence not revealed (unavailable)", user_id)
        return
    event: dict[str, Any] = {
        "type": "presence",
        "user_id": user_id,
        "status": status,
        "last_seen": last_seen,
    }
    runtime.get().waker.wake_users(audience, ephemeral=event)
