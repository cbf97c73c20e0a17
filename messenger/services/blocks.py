"""Blocking (API.md "Blocking, message requests, and who sees whose presence").

A block is written on the shard of each of the two users, so every check reads
one shard: the blocked user's actions (opening a direct conversation, sending in
it, naming the blocker in a new group, adding the blocker to one, seeing its
presence, finding it in people search) read "who blocked me" on the actor's own
shard; the blocker's side (no pushes, no typing or presence sent to the blocked
user) reads "whom did I block" on the blocker's shard.

Both writes are idempotent and a retry of the route finishes a half-done one.

Every send asks "who blocked the sender": each worker caches the answer per user
for BLOCKERS_CACHE_TTL_SECS, and a block or unblock is broadcast
(realtime/revocations.py) so every worker forgets the blocked user's entry at
once; like the token cache, it serves only while its listener is subscribed. A
send then costs no more round trips than before blocks existed.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import redis

from messenger import metrics, runtime
from messenger.errors import Forbidden, NotFound, ValidationFailed
from messenger.models import User
from messenger.realtime import revocations
from messenger.services import accounts, presence
from messenger.storage import blocks as store
from messenger.storage import conversations as conversation_store
from messenger.storage import users as user_store

logger = logging.getLogger(__name__)

# How long a worker trusts its cached "who blocked this user" (the broadcast
# makes changes reach it at once; this bounds a broadcast lost unnoticed).
BLOCKERS_CACHE_TTL_SECS = 30.0
BLOCKERS_CACHE_MAX_ENTRIES = 50_000


class BlockersCache:
    """This worker's "who blocked user U", by U; serves only while `is_live()`."""

    def __init__(
        self,
        ttl_secs: float = BLOCKERS_CACHE_TTL_SECS,
        max_entries: int = BLOCKERS_CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_secs = ttl_secs
        self.max_entries = max_entries
        self.clock = clock
        self.entries: OrderedDict[int, tuple[frozenset[int], float]] = OrderedDict()
        self.is_live: Callable[[], bool] = lambda: False
        # Bumped by every drop and clear: an answer read from the database
        # before a revocation arrived must not be cached after it (put() takes
        # the generation seen before the read).
        self.generation = 0

    def get(self, user_id: int) -> frozenset[int] | None:
        if not self.is_live():
            return None
        entry = self.entries.get(user_id)
        if entry is None or self.clock() - entry[1] >= self.ttl_secs:
            return None
        return entry[0]

    def put(self, user_id: int, blockers: frozenset[int], generation: int) -> None:
        if not self.is_live() or generation != self.generation:
            return
        self.entries[user_id] = (blockers, self.clock())
        self.entries.move_to_end(user_id)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def drop(self, user_ids: Iterable[int]) -> None:
        self.generation += 1
        for user_id in user_ids:
            self.entries.pop(user_id, None)

    def clear(self) -> None:
        self.generation += 1
        self.entries.clear()


blockers_cache = BlockersCache()


def _broadcast(blocked_id: int) -> None:
    """Every worker forgets who blocked blocked_id (this one at once)."""
    blockers_cache.drop([blocked_id])
    try:
        revocations.publish(runtime.get().redis, blocked_user_ids=[blocked_id])
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="revocations").inc()
        logger.warning("block broadcast failed: %s", exc)


def block(blocker_id: int, blocked_id: int) -> None:
    """blocker_id blocks blocked_id (again: nothing changes).

    Raises:
        ValidationFailed: oneself.
        NotFound: no such user.
    """
    if blocker_id == blocked_id:
        raise ValidationFailed(
            "The request is not valid.",
            fields={"user_id": ["You cannot block yourself."]},
        )
    if blocked_id not in accounts.existing_ids([blocked_id]):
        raise NotFound("No such user.")
    router = runtime.get().router
    # The blocked user's side first: it is the side that refuses, so from the
    # moment the blocker's list shows the block, it holds.
    with router.on_user(blocked_id, "block_blocked_side") as cur:
        store.insert(cur, blocker_id, blocked_id)
    with router.on_user(blocker_id, "block_blocker_side") as cur:
        store.insert(cur, blocker_id, blocked_id)
    _broadcast(blocked_id)
    logger.info("user %s blocked user %s", blocker_id, blocked_id)


def unblock(blocker_id: int, blocked_id: int) -> None:
    """Lift a block (none: nothing changes). The formerly blocked user, if it may
    now see the blocker's presence, is told it at once."""
    router = runtime.get().router
    with router.on_user(blocker_id, "unblock_blocker_side") as cur:
        store.delete(cur, blocker_id, blocked_id)
    with router.on_user(blocked_id, "unblock_blocked_side") as cur:
        store.delete(cur, blocker_id, blocked_id)
    _broadcast(blocked_id)
    presence.reveal(blocker_id, [blocked_id])


def blocked_users(blocker_id: int) -> list[User]:
    """Whom blocker_id blocked, most recent first."""
    router = runtime.get().router
    with router.on_user(blocker_id, "list_blocks", transaction=False) as cur:
        ids = [user_id for user_id, _at in store.blocked_by(cur, blocker_id)]
    if not ids:
        return []
    with router.directory("blocked_users", transaction=False) as cur:
        rows = {row[0]: row for row in user_store.by_ids(cur, ids)}
    return [User(*rows[i]) for i in ids if i in rows]


def blockers_of(user_id: int) -> frozenset[int]:
    """Who blocked user_id: this worker's cache, else user_id's shard."""
    cached = blockers_cache.get(user_id)
    if cached is not None:
        return cached
    generation = blockers_cache.generation
    with runtime.get().router.on_user(user_id, "blockers_of", transaction=False) as cur:
        found = frozenset(store.blockers_of(cur, user_id))
    blockers_cache.put(user_id, found, generation)
    return found


def require_not_blocked(actor_id: int, others: Iterable[int]) -> None:
    """Raises Forbidden when any of `others` blocked actor_id."""
    wanted = sorted(set(others) - {actor_id})
    if not wanted:
        return
    with runtime.get().router.on_user(
        actor_id, "check_blocked", transaction=False
    ) as cur:
        if store.blockers_among(cur, actor_id, wanted):
            raise Forbidden("This user does not accept your messages.")


def blocked_among(blocker_id: int, others: Iterable[int]) -> set[int]:
    """Those of `others` whom blocker_id blocked (blocker's shard)."""
    wanted = sorted(set(others))
    if not wanted:
        return set()
    with runtime.get().router.on_user(
        blocker_id, "blocked_among", transaction=False
    ) as cur:
        return store.blocked_among(cur, blocker_id, wanted)


def require_can_send(sender_id: int, conversation_id: int) -> None:
    """Raises Forbidden when the conversation is a direct one with a user who
    blocked the sender. One read of the sender's shard; the conversation is
    read only when someone blocked the sender.

    Raises:
        Forbidden: blocked by the other member of this direct conversation.
    """
    blockers = blockers_of(sender_id)
    if not blockers:
        return
    with runtime.get().router.on_conversation(
        conversation_id, "send_block_check", transaction=False
    ) as cur:
        record = conversation_store.get(cur, conversation_id)
        if record is None or record.kind != "direct":
            return
        member_ids = conversation_store.member_ids(cur, conversation_id)
    if sender_id in member_ids and blockers & set(member_ids):
        raise Forbidden("This user does not accept your messages.")
