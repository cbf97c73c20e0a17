"""PostgreSQL and Redis under one folder, started together and stopped together.

`messenger run`, the test session and the benchmark each start their servers
through LocalServers, so every way out (a failed start, an error, Ctrl-C, SIGTERM)
stops everything that was started and, for throw-away folders, removes them.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from messenger.embedded.postgres import EmbeddedPostgres
from messenger.embedded.processes import Server
from messenger.embedded.redis_server import EmbeddedRedis

logger = logging.getLogger(__name__)


class LocalServers(Server):
    """A PostgreSQL cluster in root/postgres and a Redis in root/redis.

    Attributes:
        root: the folder holding both.
        pg: the PostgreSQL server.
        redis: the Redis server.
    """

    def __init__(
        self,
        root: Path,
        *,
        pg_port: int,
        redis_port: int,
        databases: Sequence[str] = ("messenger",),
        persistent: bool = True,
        remove_on_stop: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Describe the servers; nothing runs until start().

        Args:
            root: folder for both servers' files.
            pg_port, redis_port: TCP ports on 127.0.0.1.
            databases: PostgreSQL databases created when missing.
            persistent: keep Redis's data across restarts (PostgreSQL always does).
            remove_on_stop: delete root (and a cluster moved under /var/tmp) once
                the servers have stopped: for test and benchmark runs.
            log: called with each progress line.
        """
        self.root = Path(root).absolute()
        self.remove_on_stop = remove_on_stop
        self.pg = EmbeddedPostgres(self.root / "postgres", pg_port, databases, log)
        self.redis = EmbeddedRedis(
            self.root / "redis", redis_port, log, persistent=persistent
        )

    def start(self) -> None:
        """Start PostgreSQL, then Redis. On any failure or interruption, stop what
        was started (and remove a throw-away root) before the error goes on."""
        try:
            self.pg.start()
            self.redis.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop Redis, then PostgreSQL; never leaves either running.

        Both are always attempted; the first error is raised after both tries.
        """
        errors: list[BaseException] = []
        for server in (self.redis, self.pg):
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - the other server still stops
                logger.error("stopping %s failed: %s", type(server).__name__, exc)
                errors.append(exc)
        if self.remove_on_stop:
            for folder in (self.pg.fallback_home, self.root):
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(folder)
        if errors:
            raise errors[0]
