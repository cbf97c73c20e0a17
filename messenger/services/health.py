"""Readiness: can this host serve, and which of its dependencies answer?

Each physical database and Redis is asked once, all at the same time, each
within CHECK_TIMEOUT_SECS (a database whose breaker is open counts as down
without being asked). A host can serve while the directory and Redis answer:
one shard database down hurts only the users whose data it holds, so a load
balancer must not take every host out for it (`/readyz`). Monitoring wants to
know about any of them (`/readyz/strict`).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import gevent
import redis

from messenger import runtime
from messenger.errors import Unavailable
from messenger.storage.pools import Pool

logger = logging.getLogger(__name__)

# A dependency that takes longer than this to answer `SELECT 1` or PING is down,
# as far as a load balancer's probe is concerned.
CHECK_TIMEOUT_SECS = 2.0


@dataclass(frozen=True)
class DatabaseStatus:
    database: str  # host:port/db, never credentials
    is_up: bool
    is_directory: bool
    shards: int  # logical shards it holds


@dataclass(frozen=True)
class Readiness:
    node: str
    databases: tuple[DatabaseStatus, ...]
    redis_up: bool

    @property
    def can_serve(self) -> bool:
        """The directory and Redis answer (the /readyz condition)."""
        return self.redis_up and all(d.is_up for d in self.databases if d.is_directory)

    @property
    def all_up(self) -> bool:
        """Every database and Redis answer (the /readyz/strict condition)."""
        return self.redis_up and all(d.is_up for d in self.databases)

    @property
    def down(self) -> list[str]:
        """What does not answer, named for people."""
        names = [f"database {d.database}" for d in self.databases if not d.is_up]
        return names + ([] if self.redis_up else ["redis"])


def _database_answers(pool: Pool) -> bool:
    try:
        with (
            gevent.Timeout(CHECK_TIMEOUT_SECS),
            pool.connection() as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SELECT 1")
    except (Unavailable, gevent.Timeout):
        return False
    return True


def _redis_answers() -> bool:
    try:
        with gevent.Timeout(CHECK_TIMEOUT_SECS):
            runtime.get().redis.ping()
    except (redis.RedisError, gevent.Timeout):
        return False
    return True


def readiness() -> Readiness:
    """Ask every database and Redis at once; at most CHECK_TIMEOUT_SECS."""
    rt = runtime.get()
    router = rt.router
    shard_counts = {
        dsn: len(shards) for dsn, shards in router.shard_map.shards_by_dsn().items()
    }
    dsns = list(router.pools)
    checks = [gevent.spawn(_database_answers, router.pools[dsn]) for dsn in dsns]
    redis_check = gevent.spawn(_redis_answers)
    gevent.joinall([*checks, redis_check])
    databases = tuple(
        DatabaseStatus(
            router.pools[dsn].label,
            bool(check.value),
            dsn == router.shard_map.directory_dsn,
            shard_counts.get(dsn, 0),
        )
        for dsn, check in zip(dsns, checks, strict=True)
    )
    node = rt.settings.node_name or socket.gethostname()
    return Readiness(node, databases, bool(redis_check.value))


def check_dependencies() -> list[str]:
    """Names of the dependencies that do not answer (empty when all do)."""
    return readiness().down
