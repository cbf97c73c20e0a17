"""Both ends of a wake-up's trip through Redis, minus the dispatcher.

Registry: records in Redis (`conn:<user>`) which workers hold a user's polls.
Waker: after a fan-out, finds those workers and RPUSHes the user ids onto their
wake lists, in two pipelined round trips however many users.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from messenger import metrics
from messenger.realtime import keys
from messenger.realtime.hub import Delivery, Hub

logger = logging.getLogger(__name__)


def encode_wake(user_id: int, ephemeral: dict[str, Any] | None) -> bytes:
    """A wake list item: the user id, or "e" + JSON for an ephemeral event."""
    if ephemeral is None:
        return str(user_id).encode()
    return (
        b"e"
        + json.dumps({"u": user_id, "e": ephemeral}, separators=(",", ":")).encode()
    )


def decode_wake(item: bytes) -> tuple[int, dict[str, Any] | None]:
    if item[:1] == b"e":
        data = json.loads(item[1:])
        return int(data["u"]), data["e"]
    return int(item), None


def encode_delivery(event_type: str, event_ids: dict[int, int], fields: str) -> bytes:
    """A wake list item for one stored event reaching several users of a worker:
    "d<type>|<user>:<event id>,...|<the event's fields as a JSON object>".

    Update decode_delivery and Delivery.encoded when adding a part.
    """
    pairs = ",".join(f"{u}:{e}" for u, e in event_ids.items())
    return f"d{event_type}|{pairs}|{fields}".encode()


def decode_delivery(item: bytes) -> tuple[Delivery, dict[int, int]]:
    event_type, pairs, fields = item[1:].split(b"|", 2)
    event_ids = {}
    for pair in pairs.split(b","):
        user_id, _, event_id = pair.partition(b":")
        event_ids[int(user_id)] = int(event_id)
    if not fields.startswith(b"{") or not event_type.isalnum():
        raise ValueError("not a delivery")
    return Delivery(event_type.decode(), fields), event_ids


class Registry:
    """Keeps `conn:<user>` current for the users whose polls this worker holds."""

    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        hub: Hub,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.hub = hub
        self.clock = clock
        self._until: dict[int, float] = {}

    def ensure(self, user_id: int) -> bool:
        """Make sure senders can find this worker for user_id before the poll reads.

        Returns False when Redis is unreachable (the poll then re-reads the
        database on a short interval instead of waiting for a wake-up).
        """
        now = self.clock()
        if self._until.get(user_id, 0.0) - now > keys.CONN_TTL_SECS / 2:
            return True
        try:
            self._write([user_id], now)
        except redis.RedisError as exc:
            metrics.REDIS_ERRORS.labels(op="register").inc()
            logger.debug("user %s: registration failed: %s", user_id, exc)
            return False
        return True

    def refresh(self) -> None:
        """Re-register the users held here whose registration has half its
        lifetime left or less (as ensure() would); forget the ones that lapsed.

        Run every keys.CONN_REFRESH_SECS: a registration is rewritten with at
        least CONN_TTL_SECS / 2 - CONN_REFRESH_SECS left, and each held user costs
        a write every other refresh, not every one (10,000 held polls: thousands
        of Redis commands a minute fewer on an idle worker).
        """
        now = self.clock()
        for user_id in [u for u, t in self._until.items() if t <= now]:
            del self._until[user_id]
        due = now + keys.CONN_TTL_SECS / 2
        users = [u for u in self.hub.users() if self._until.get(u, 0.0) <= due]
        if users:
            self._write(users, now)

    def deregister(self) -> None:
        """Remove this worker from every user it registered and drop its wake
        list: a stopping worker stops receiving wakes at once instead of for
        up to CONN_TTL_SECS. Redis errors are raised (the caller logs them)."""
        ids = list(self._until)
        self._until.clear()
        pipe = self.client.pipeline(transaction=False)
        for user_id in ids:
            pipe.zrem(keys.connections(user_id), self.worker_id)
        pipe.delete(keys.wake_list(self.worker_id))
        pipe.execute()

    def forget_all(self) -> None:
        """Redis may have lost everything (restart): register again on next use."""
        self._until.clear()

    def _write(self, user_ids: Iterable[int], now: float) -> None:
        expiry = now + keys.CONN_TTL_SECS
        pipe = self.client.pipeline(transaction=False)
        ids = list(user_ids)
        for user_id in ids:
            key = keys.connections(user_id)
            pipe.zadd(key, {self.worker_id: expiry})
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.expire(key, keys.CONN_TTL_SECS)
        pipe.execute()
        for user_id in ids:
            self._until[user_id] = expiry


class Waker:
    """Wakes users' polls on every worker: locally at once, elsewhere via Redis."""

    def __init__(
        self,
        client: redis.Redis,
        worker_id: str,
        hub: Hub,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.hub = hub
        self.clock = clock

    def wake_users(
        self, user_ids: Iterable[int], ephemeral: dict[str, Any] | None = None
    ) -> None:
        """Wake the polls of `user_ids` wherever they are held.

        Redis trouble is logged and counted, never raised: the waiting polls fall
        back to re-reading the database (the dispatcher marks the hub degraded).
        """
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return
        for user_id in ids:
            self.hub.wake(user_id, ephemeral)
        try:
            self._push(ids, ephemeral)
        except redis.RedisError as exc:
            metrics.REDIS_ERRORS.labels(op="wake").inc()
            logger.warning("wake of %d users failed: %s", len(ids), exc)

    def deliver(
        self, event_type: str, event_ids: dict[int, int], fields_json: str
    ) -> None:
        """Wake the polls of the users in event_ids for one stored event, carrying
        each user's new event id and the event (its fields as a JSON object), so
        a poll whose cursor is the id before can answer without a read.

        Other workers get one wake list item each for all their users. Redis
        trouble is logged and counted, never raised (as in wake_users).
        """
        if not event_ids:
            return
        delivery = Delivery(event_type, fields_json.encode())
        for user_id, event_id in event_ids.items():
            self.hub.deliver(user_id, event_id, delivery)
        try:
            workers = self._workers_of(list(event_ids))
            by_worker: dict[str, dict[int, int]] = {}
            for user_id, held_by in workers.items():
                for worker in held_by:
                    by_worker.setdefault(worker, {})[user_id] = event_ids[user_id]
            self._send(
                {
                    worker: [encode_delivery(event_type, ids, fields_json)]
                    for worker, ids in by_worker.items()
                }
            )
        except redis.RedisError as exc:
            metrics.REDIS_ERRORS.labels(op="wake").inc()
            logger.warning("delivery to %d users failed: %s", len(event_ids), exc)

    def _workers_of(self, ids: list[int]) -> dict[int, list[str]]:
        """The other workers holding each user's polls (one round trip)."""
        now = self.clock()
        pipe = self.client.pipeline(transaction=False)
        for user_id in ids:
            pipe.zrangebyscore(keys.connections(user_id), now, "+inf")
        found: dict[int, list[str]] = {}
        for user_id, workers in zip(ids, pipe.execute(), strict=True):
            others = [w.decode() for w in workers if w.decode() != self.worker_id]
            if others:
                found[user_id] = others
        return found

    def _push(self, ids: list[int], ephemeral: dict[str, Any] | None) -> None:
        targets: dict[str, list[bytes]] = {}
        for user_id, workers in self._workers_of(ids).items():
            for worker in workers:
                targets.setdefault(worker, []).append(encode_wake(user_id, ephemeral))
        self._send(targets)

    def _send(self, targets: dict[str, list[bytes]]) -> None:
        """RPUSH each worker's items onto its wake list (one round trip)."""
        if not targets:
            return
        pipe = self.client.pipeline(transaction=False)
        for worker, items in targets.items():
            key = keys.wake_list(worker)
            pipe.rpush(key, *items)
            pipe.ltrim(key, -keys.WAKE_LIST_MAX, -1)
            pipe.expire(key, keys.WAKE_LIST_TTL_SECS)
        pipe.execute()
        metrics.WAKES_SENT.inc(sum(len(v) for v in targets.values()))
