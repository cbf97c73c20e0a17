"""Redis client factories.

redis-py 8 defaults bite under long polls: 100 connections per pool, 5 s socket
timeouts retried 10 times. Every client here sets its limits explicitly and does
not retry (a failed wake or presence write degrades; it never blocks a request).
"""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Shared-pool commands are small and fast; anything slower means Redis is in
# trouble, and the request should degrade instead of waiting.
COMMAND_TIMEOUT_SECS = 1.0
CONNECT_TIMEOUT_SECS = 1.0


def shared_client(url: str, max_connections: int) -> redis.Redis:
    """A bounded pool for everything but the dispatcher's BLPOP."""
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
    """A one-connection client for a blocking pop of `block_secs`.

    The socket timeout stays above the block time, so a quiet BLPOP is never cut
    off (and retried) while Redis still holds a popped item for it.
    """
    pool = redis.ConnectionPool.from_url(
        url,
        max_connections=1,
        socket_timeout=block_secs + 5,
        socket_connect_timeout=CONNECT_TIMEOUT_SECS,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool)
