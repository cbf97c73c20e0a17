"""Presence in Redis: when each user last polled, and who is announced online.

Two kinds of keys (realtime/keys.py):
- `presence:seen:<user>`: unix time of the user's last poll activity (a poll
  starting or ending, or a held poll's periodic refresh). Online, by API.md's
  definition, is "seen less than the grace window ago"; answers read only this.
- `presence:online:<bucket>`: sorted sets of the users announced online, scored
  by last activity. Adding a user that was not there is the online transition;
  removing one whose score fell behind the grace window is the offline
  transition. Both are single atomic Redis operations, so each transition is
  announced once, by one worker, however many workers see the user's polls.

Nothing here touches PostgreSQL or raises Redis errors past the caller's
`except redis.RedisError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import redis

from messenger.realtime import keys

# Pops the members of one online set whose last activity is at or before the
# cutoff, atomically, so two workers sweeping at once never both announce one
# user offline. One key per script call: safe on a Redis Cluster.
_POP_STALE = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1],
                        'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #gone, 2 do
    redis.call('ZREM', KEYS[1], gone[i])
end
return gone
"""

# Users popped per set per sweep; the rest wait for the next sweep.
SWEEP_BATCH = 1000


def bucket_of(user_id: int) -> int:
    return user_id % keys.PRESENCE_BUCKETS


class PresenceBoard:
    """The Redis side of presence, shared by every worker."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def touch(self, seen: Mapping[int, float]) -> list[int]:
        """Record poll activity (user → unix time) in one round trip.

        Returns the users that were not announced online before: the caller
        announces them.
        """
        if not seen:
            return []
        pipe = self.client.pipeline(transaction=False)
        users = list(seen)
        for user_id in users:
            at = seen[user_id]
            # GT: a late write from a slower worker never moves time backwards.
            pipe.zadd(
                keys.presence_online(bucket_of(user_id)), {str(user_id): at}, gt=True
            )
            pipe.set(
                keys.presence_seen(user_id), repr(at), ex=keys.PRESENCE_SEEN_TTL_SECS
            )
        results = pipe.execute()
        return [u for u, added in zip(users, results[::2], strict=True) if added]

    def pop_offline(self, cutoff: float) -> list[tuple[int, float]]:
        """Users announced online whose last activity is at or before cutoff,
        removed from the online sets; (user, last activity) each."""
        # EVAL, not EVALSHA: a cluster pipeline sends each bucket's call to its
        # node and could not load a script missing there; the text is small.
        # (redis-py's ClusterPipeline.eval() is not the command: send it raw.)
        pipe = self.client.pipeline(transaction=False)
        for bucket in range(keys.PRESENCE_BUCKETS):
            pipe.execute_command(
                "EVAL",
                _POP_STALE,
                1,
                keys.presence_online(bucket),
                repr(cutoff),
                SWEEP_BATCH,
            )
        gone: list[tuple[int, float]] = []
        for popped in pipe.execute():
            for i in range(0, len(popped), 2):
                gone.append((int(popped[i]), float(popped[i + 1])))
        return gone

    def last_seen(self, user_ids: Iterable[int]) -> dict[int, float]:
        """Last poll activity of each user that has one on record."""
        ids = list(user_ids)
        if not ids:
            return {}
        # GETs in a pipeline, not one MGET: the users' keys lie in different
        # Redis Cluster slots (a cluster pipeline sends one batch per node).
        pipe = self.client.pipeline(transaction=False)
        for user_id in ids:
            pipe.get(keys.presence_seen(user_id))
        values = pipe.execute()
        return {u: float(v) for u, v in zip(ids, values, strict=True) if v is not None}
