"""Readiness: does every physical database and Redis answer?"""

from __future__ import annotations

import logging

import redis

from messenger import runtime
from messenger.errors import Unavailable
from messenger.storage.pools import describe_dsn

logger = logging.getLogger(__name__)


def check_dependencies() -> list[str]:
    """Names of the dependencies that do not answer (empty when all do)."""
    rt = runtime.get()
    down = []
    for dsn, pool in rt.router.pools.items():
        try:
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
        except Unavailable:
            down.append(f"database {describe_dsn(dsn)}")
    try:
        rt.redis.ping()
    except redis.RedisError:
        down.append("redis")
    return down
