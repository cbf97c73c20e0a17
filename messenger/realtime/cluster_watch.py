"""Redis Cluster: degrade this worker's polls while any master does not answer.

With one Redis server, the dispatcher notices an outage (its BLMPOP fails) and
marks the hub degraded: held polls re-read the database every second until
Redis is back. In a cluster, a master that fails takes only its slots away: the
dispatcher's own wake list may sit on a healthy master, yet senders can no
longer read the `conn:` registrations (or push to the wake lists) stored on the
failed one, and those polls would wait out their timeout. So each worker also
pings the master of every slot range, every WATCH_SECS: while one does not
answer, the hub is degraded; once all answer, registrations are written again
(the master may have come back empty) and every held poll re-reads once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from messenger import metrics
from messenger.realtime.connections import disconnect
from messenger.realtime.hub import Hub
from messenger.realtime.wakeups import Registry

logger = logging.getLogger(__name__)

# How often the masters are pinged: a failed master degrades polls within about
# this long (plus the hub's one-second re-read).
WATCH_SECS = 1.0
# A master slower than this to answer PING counts as down for the moment.
PING_TIMEOUT_SECS = 0.5


class ClusterWatch:
    def __init__(
        self,
        seeds: list[tuple[str, int]],
        hub: Hub,
        registry: Registry,
        *,
        username: str | None = None,
        password: str | None = None,
        sleep: Callable[[float], object] = gevent.sleep,
    ) -> None:
        """Args:
        seeds: the nodes of MESSENGER_REDIS_URL; the slot map is read from
            the first of them (or of the masters last seen) that answers.
        username, password: the URL's credentials, for every node.
        """
        self.seeds = list(seeds)
        self.username = username
        self.password = password
        self.hub = hub
        self.registry = registry
        self.sleep = sleep
        self.degraded = False
        self._pings: dict[tuple[str, int], redis.Redis] = {}
        self._stopping = False

    def run(self) -> None:
        while not self._stopping:
            self.check_once()
            self.sleep(WATCH_SECS)

    def stop(self) -> None:
        self._stopping = True
        for client in self._pings.values():
            disconnect(client)
        self._pings.clear()

    def check_once(self) -> bool:
        """Ping every master once; degrade or recover the hub. True when all answer."""
        down = self._unreachable()
        if down:
            if not self.degraded:
                metrics.REDIS_ERRORS.labels(op="cluster_watch").inc()
                logger.warning(
                    "Redis Cluster: %s not answering; polls fall back to "
                    "re-reading the database",
                    down,
                )
                self.degraded = True
            # Also when the dispatcher, its own node fine again, marked it ok.
            if self.hub.redis_ok:
                self.hub.redis_ok = False
                self.hub.wake_all()  # held polls re-read now, then every second
        elif not down and self.degraded:
            try:
                self.registry.forget_all()
                self.registry.refresh()
            except redis.RedisError as exc:
                logger.debug("Redis Cluster: re-registering failed: %s", exc)
                return False
            logger.info("Redis Cluster: every master answers; wake-ups resume")
            self.degraded = False
            self.hub.redis_ok = True
            self.hub.wake_all()
        return not down

    def _client(self, address: tuple[str, int]) -> redis.Redis:
        client = self._pings.get(address)
        if client is None:
            client = self._pings[address] = redis.Redis(
                address[0],
                address[1],
                username=self.username,
                password=self.password,
                socket_timeout=PING_TIMEOUT_SECS,
                socket_connect_timeout=PING_TIMEOUT_SECS,
                retry=Retry(NoBackoff(), 0),
            )
        return client

    def _masters(self) -> set[tuple[str, int]] | None:
        """The master of every slot range, from the first node that answers."""
        for address in dict.fromkeys([*self.seeds, *self._pings]):
            try:
                slots = self._client(address).execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                continue
            masters = set()
            for _first, _last, primary, *_replicas in slots:
                host = (
                    primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
                )
                masters.add((host or address[0], int(primary[1])))
            return masters
        return None

    def _unreachable(self) -> str:
        """The masters that do not answer, named; "" when all do."""
        masters = self._masters()
        if masters is None:
            return "every node"
        down = []
        for address in sorted(masters):
            try:
                self._client(address).ping()
            except redis.RedisError:
                down.append(f"{address[0]}:{address[1]}")
        return ", ".join(down)
