"""Redis client factories: one server, a Redis Cluster, or a Sentinel-watched primary.

MESSENGER_REDIS_URL selects the deployment:
- `redis://h:p/db` or `rediss://…`: one server;
- `redis+cluster://h:p,h:p[,…]`: a Redis Cluster, found from any of the nodes
  named (redirections and failovers are followed by the client);
- `redis+sentinel://h:p,h:p[,…]/service[/db]`: the primary Sentinel names for
  `service`, followed across failovers.

redis-py 8 defaults bite under long polls: 100 connections per pool, 5 s socket
timeouts retried 10 times. Every client here sets its limits explicitly and does
not retry (a failed wake or presence write degrades; it never blocks a request).
Cluster and Sentinel clients are returned typed as redis.Redis: they answer the
same commands (the multi-key ones we send keep to one hash slot, realtime/keys.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.commands.core import Script
from redis.connection import Encoder
from redis.exceptions import ClusterError, RedisClusterException
from redis.retry import Retry
from redis.sentinel import Sentinel

from messenger.realtime.redis_urls import (
    CLUSTER,
    SENTINEL,
    RedisTarget,
    parse_redis_url,
)

# Shared-pool commands are small and fast; anything slower means Redis is in
# trouble, and the request should degrade instead of waiting.
COMMAND_TIMEOUT_SECS = 1.0
CONNECT_TIMEOUT_SECS = 1.0
# A cluster client re-reads the slot map after a failed command or redirection
# at most this many times per command: enough to follow one failover or
# reshard, few enough that a dead cluster fails a request quickly.
CLUSTER_RETRIES = 2


class _ClusterPipeline(ClusterPipeline):
    def execute(self, raise_on_error: bool = True) -> list[Any]:
        try:
            return super().execute(raise_on_error)  # type: ignore[no-any-return]
        except RedisClusterException as exc:
            raise ClusterError(str(exc)) from exc


class _Cluster(RedisCluster):
    """redis-py's cluster client, raising redis.RedisError for every failure.

    With a master down and no replica to take over, redis-py raises
    SlotNotCoveredError or RedisClusterException, which are not RedisErrors: every
    `except redis.RedisError` that makes a wake, presence write or rate-limit
    check degrade instead of failing the request would miss them.
    """

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterError(str(exc)) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        pipe.__class__ = _ClusterPipeline
        return pipe


class _LazyCluster:
    """A cluster client made on first use.

    redis-py's cluster client reads the slot map when it is constructed and
    raises when no node answers; a worker must start (and its dispatcher keep
    retrying) while the cluster is away, as with one Redis server. Every
    attribute is the real client's, made then; failing to make it raises a
    redis.RedisError.
    """

    def __init__(self, make: Callable[[], _Cluster]) -> None:
        self._make = make
        self._client: _Cluster | None = None

    def _real(self) -> _Cluster:
        if self._client is None:
            try:
                self._client = self._make()
            except RedisClusterException as exc:
                raise ClusterError(str(exc)) from exc
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def get_encoder(self) -> Encoder:
        """For register_script(), which must not need the cluster."""
        return Encoder("utf-8", "strict", False)

    def register_script(self, script: str) -> Script:
        return Script(self, script)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _cluster(target: RedisTarget, max_connections: int, timeout: float) -> redis.Redis:
    return cast(
        redis.Redis,
        _LazyCluster(lambda: _make_cluster(target, max_connections, timeout)),
    )


def _make_cluster(
    target: RedisTarget, max_connections: int, timeout: float
) -> _Cluster:
    return _Cluster(
        startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
        username=target.username,
        password=target.password,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_SECS,
        retry=Retry(NoBackoff(), CLUSTER_RETRIES),
        # A node that is down must not stop commands for slots that are served.
        require_full_coverage=False,
        # Follow the cluster's own view of its nodes, not only the seeds.
        dynamic_startup_nodes=True,
    )


def _sentinel(target: RedisTarget, **pool_kwargs: Any) -> redis.Redis:
    sentinel = Sentinel(
        list(target.nodes),
        socket_timeout=COMMAND_TIMEOUT_SECS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECS,
    )
    return sentinel.master_for(  # type: ignore[no-any-return]
        target.service,
        db=target.db,
        username=target.username,
        password=target.password,
        socket_connect_timeout=CONNECT_TIMEOUT_SECS,
        retry=Retry(NoBackoff(), 0),
        **pool_kwargs,
    )


def shared_client(url: str, max_connections: int) -> redis.Redis:
    """A bounded pool for everything but the dispatcher's BLPOP (per node on a
    cluster)."""
    target = parse_redis_url(url)
    if target.kind == CLUSTER:
        return _cluster(target, max_connections, COMMAND_TIMEOUT_SECS)
    if target.kind == SENTINEL:
        return _sentinel(
            target,
            max_connections=max_connections,
            socket_timeout=COMMAND_TIMEOUT_SECS,
            health_check_interval=30,
        )
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=COMMAND_TIMEOUT_SECS,
        socket_timeout=COMMAND_TIMEOUT_SECS,
        socket_connect_timeout=CONNECT_TIMEOUT_SECS,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


def blocking_client(url: str, block_secs: float) -> redis.Redis:
    """A client for a blocking pop of `block_secs` (one connection; on a cluster,
    one per node).

    The socket timeout stays above the block time, so a quiet BLPOP is never cut
    off (and retried) while Redis still holds a popped item for it.
    """
    target = parse_redis_url(url)
    if target.kind == CLUSTER:
        return _cluster(target, 1, block_secs + 5)
    if target.kind == SENTINEL:
        return _sentinel(target, max_connections=1, socket_timeout=block_secs + 5)
    pool = redis.ConnectionPool.from_url(
        url,
        max_connections=1,
        socket_timeout=block_secs + 5,
        socket_connect_timeout=CONNECT_TIMEOUT_SECS,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool)


def disconnect(client: redis.Redis) -> None:
    """Close every socket of a client (close() leaves a pool it was given open)."""
    if isinstance(client, _LazyCluster | RedisCluster):
        client.close()
    else:
        client.connection_pool.disconnect()
