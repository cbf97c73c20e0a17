"""The one greenlet per worker that BLPOPs the worker's wake list.

One Redis connection serves every poll the worker holds, however many. When Redis
is unreachable the hub is marked degraded (polls re-read the database on a short
interval); when it returns, registrations are written again and every held poll
re-reads once, so nothing missed during the outage waits for a timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import redis

from messenger import metrics
from messenger.backoff import Backoff
from messenger.realtime import keys
from messenger.realtime.cluster_watch import ClusterWatch
from messenger.realtime.connections import (
    CLUSTER,
    blocking_client,
    disconnect,
    parse_redis_url,
)
from messenger.realtime.hub import Hub
from messenger.realtime.wakeups import Registry, decode_delivery, decode_wake

logger = logging.getLogger(__name__)

# Short enough that a stopping worker notices quickly; the socket timeout of the
# dedicated connection stays above it.
BLOCK_SECS = 5
BATCH = 500
BACKOFF_MAX_SECS = 5.0


def deregister(registry: Registry) -> None:
    """registry.deregister(), logged instead of raised (a stopping worker)."""
    try:
        registry.deregister()
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="register").inc()
        logger.warning(
            "worker %s: deregistration failed (%s); its entries expire",
            registry.worker_id,
            exc,
        )


class Dispatcher:
    def __init__(
        self,
        redis_url: str,
        worker_id: str,
        hub: Hub,
        registry: Registry,
        *,
        client_factory: Callable[[], redis.Redis] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.worker_id = worker_id
        self.hub = hub
        self.registry = registry
        self._client_factory = client_factory or (
            lambda: blocking_client(redis_url, BLOCK_SECS)
        )
        self._greenlets: list[gevent.Greenlet] = []
        self._stopping = False
        self._has_blmpop = True
        self._watch: ClusterWatch | None = None

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._run), gevent.spawn(self._keep_registered)]
        target = parse_redis_url(self.redis_url)
        if target.kind == CLUSTER:
            self._watch = ClusterWatch(
                list(target.nodes),
                self.hub,
                self.registry,
                username=target.username,
                password=target.password,
            )
            self._greenlets.append(gevent.spawn(self._watch.run))

    def stop(self) -> None:
        """Stop popping and deregister: senders stop pushing to this worker."""
        self._stopping = True
        gevent.killall(self._greenlets, timeout=2)
        if self._watch is not None:
            self._watch.stop()
        deregister(self.registry)

    def _run(self) -> None:
        retry = Backoff(0.1, BACKOFF_MAX_SECS, jitter=(0.5, 1.5))
        key = keys.wake_list(self.worker_id)
        while not self._stopping:
            client = self._client_factory()
            try:
                client.ping()
                # In a cluster, the watch decides when every master is back.
                watch_degraded = self._watch is not None and self._watch.degraded
                if not self.hub.redis_ok and not watch_degraded:
                    logger.info(
                        "worker %s: Redis is back; resuming wake-ups", self.worker_id
                    )
                    self.registry.forget_all()
                    self.registry.refresh()
                    self.hub.redis_ok = True
                    self.hub.wake_all()
                retry.reset()
                while not self._stopping:
                    batch = self._pop(client, key)
                    if batch:
                        self._deliver(batch)
            except redis.RedisError as exc:
                metrics.REDIS_ERRORS.labels(op="dispatch").inc()
                if self.hub.redis_ok:
                    logger.warning(
                        "worker %s: Redis unreachable (%s); polls fall "
                        "back to re-reading the database",
                        self.worker_id,
                        exc,
                    )
                    self.hub.redis_ok = False
                    # Polls already waiting would wait out their timeout for
                    # a wake that cannot come: they re-read now, then every
                    # second.
                    self.hub.wake_all()
                gevent.sleep(retry.failed())
            finally:
                disconnect(client)

    def _pop(self, client: redis.Redis, key: str) -> list[bytes]:
        """Wait for wake-ups; a batch of them in one round trip (BLMPOP, Redis 7).

        Older Redis lacks BLMPOP: BLPOP then LPOP the rest (one more round trip).
        """
        if self._has_blmpop:
            try:
                found = client.blmpop(BLOCK_SECS, 1, key, direction="LEFT", count=BATCH)
            except redis.ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                self._has_blmpop = False
            else:
                return list(found[1]) if found else []  # type: ignore[arg-type]
        item = client.blpop([key], timeout=BLOCK_SECS)
        if item is None:
            return []
        batch: list[bytes] = [item[1]]  # type: ignore[list-item]
        more = client.lpop(key, BATCH)
        if more:
            batch.extend(more)  # type: ignore[arg-type]
        return batch

    def _deliver(self, batch: list[bytes]) -> None:
        metrics.WAKES_RECEIVED.inc(len(batch))
        for raw in batch:
            try:
                if raw[:1] == b"d":
                    delivery, event_ids = decode_delivery(raw)
                    for user_id, event_id in event_ids.items():
                        self.hub.deliver(user_id, event_id, delivery)
                    continue
                user_id, ephemeral = decode_wake(raw)
            except (ValueError, KeyError, TypeError):
                logger.warning(
                    "worker %s: dropped malformed wake %r", self.worker_id, raw[:80]
                )
                continue
            self.hub.wake(user_id, ephemeral)

    def _keep_registered(self) -> None:
        while not self._stopping:
            gevent.sleep(keys.CONN_REFRESH_SECS)
            try:
                self.registry.refresh()
            except redis.RedisError as exc:
                metrics.REDIS_ERRORS.labels(op="register").inc()
                logger.debug("worker %s: refresh failed: %s", self.worker_id, exc)
                # A node that failed may come back empty (a cluster master
                # restarted without persistence): the next polls register anew.
                self.registry.forget_all()
