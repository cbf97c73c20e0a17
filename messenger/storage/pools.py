"""One small, bounded, gevent-safe connection pool per physical database."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import gevent.lock
import psycopg2
import psycopg2.extensions

from messenger import metrics
from messenger.errors import Unavailable

logger = logging.getLogger(__name__)

# A database that is down usually answers "connection refused" at once; one that
# is hung would make us wait, so every connect has a short bound.
_DB_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def describe_dsn(dsn: str) -> str:
    """host:port/db of a DSN, without credentials (for logs and error messages).

    A multi-host URI (`postgresql://u@a:5432,b:5433/db?target_session_attrs=…`,
    the usual way to follow a primary across a failover) names every host:
    `a:5432,b:5433/db`. urlsplit cannot read such a netloc's port, so the hosts
    are split here.
    """
    parts = urlsplit(dsn)
    hosts = parts.netloc.rpartition("@")[2]
    described = []
    for host in hosts.split(",") if hosts else [""]:
        if host.startswith("["):  # [::1]:5432
            name, _, rest = host[1:].partition("]")
            port = rest.lstrip(":")
        else:
            name, _, port = host.partition(":")
        described.append(f"{unquote(name) or 'localhost'}:{port or 5432}")
    return f"{','.join(described)}{parts.path or '/'}"


class ShardCursor(psycopg2.extensions.cursor):
    """A cursor that knows which schema (logical shard) its statements target."""

    schema: str = "public"

    def one(self, sql: str, params: Any = None) -> tuple[Any, ...]:
        """run() for a statement that always returns a row; the row."""
        row = self.run(sql, params).fetchone()
        if row is None:
            raise RuntimeError("statement returned no row")
        return row  # type: ignore[no-any-return]

    def run(self, sql: str, params: Any = None) -> ShardCursor:
        """Execute `sql` with `{s}` replaced by this cursor's schema."""
        self.execute(sql.format(s=self.schema), params)
        return self


class Pool:
    """At most `size` connections to one database; a checkout waits at most
    `checkout_timeout_secs`, then the request fails with 503 instead of hanging."""

    def __init__(
        self,
        dsn: str,
        *,
        size: int,
        checkout_timeout_secs: float,
        connect_timeout_secs: int,
        statement_timeout_ms: int,
    ) -> None:
        self.dsn = dsn
        self.label = describe_dsn(dsn)
        self.size = size
        self.checkout_timeout_secs = checkout_timeout_secs
        self.connect_timeout_secs = connect_timeout_secs
        self.statement_timeout_ms = statement_timeout_ms
        self._slots = gevent.lock.BoundedSemaphore(size)
        self._idle: list[psycopg2.extensions.connection] = []

    def _connect(self) -> psycopg2.extensions.connection:
        try:
            conn = psycopg2.connect(
                self.dsn,
                connect_timeout=self.connect_timeout_secs,
                # UTC sessions: timestamps arrive ready to print, no conversion.
                options=f"-c statement_timeout={self.statement_timeout_ms} "
                "-c TimeZone=UTC",
                application_name="messenger",
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )
        except _DB_ERRORS as exc:
            metrics.DB_ERRORS.labels(database=self.label).inc()
            logger.warning(
                "database %s: connect failed: %s",
                self.label,
                str(exc).strip().splitlines()[0] if str(exc) else exc,
            )
            raise Unavailable(f"Database {self.label} did not answer.") from None
        conn.autocommit = True
        return conn

    @contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """Check out a connection (autocommit on); broken ones are discarded.

        Raises:
            Unavailable: no connection within the checkout deadline, or the
                database failed while in use.
        """
        started = time.monotonic()
        if not self._slots.acquire(timeout=self.checkout_timeout_secs):
            metrics.DB_POOL_TIMEOUTS.labels(database=self.label).inc()
            raise Unavailable(f"Database {self.label} is busy; try again.")
        metrics.DB_POOL_WAIT.observe(time.monotonic() - started)
        conn = None
        try:
            conn = self._idle.pop() if self._idle else self._connect()
            yield conn
        except _DB_ERRORS as exc:
            self._discard(conn)
            conn = None
            metrics.DB_ERRORS.labels(database=self.label).inc()
            logger.warning(
                "database %s: %s",
                self.label,
                str(exc).strip().splitlines()[0] if str(exc) else exc,
            )
            raise Unavailable(f"Database {self.label} did not answer.") from None
        except BaseException:
            # Includes gevent timeouts and greenlet kills mid-query: the connection's
            # state is unknown, so it is not reused.
            if conn is not None and not self._reset(conn):
                conn = None
            raise
        finally:
            if conn is not None:
                if conn.closed or conn.get_transaction_status() not in (
                    psycopg2.extensions.TRANSACTION_STATUS_IDLE,
                ):
                    self._discard(conn)
                else:
                    self._idle.append(conn)
            self._slots.release()

    def _reset(self, conn: psycopg2.extensions.connection) -> bool:
        """Roll back after an application error; False if the connection is lost."""
        if conn.closed:
            return False
        status = conn.get_transaction_status()
        if status == psycopg2.extensions.TRANSACTION_STATUS_ACTIVE:
            self._discard(conn)
            return False
        if status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            try:
                conn.rollback()
            except _DB_ERRORS:
                self._discard(conn)
                return False
        return True

    @staticmethod
    def _discard(conn: psycopg2.extensions.connection | None) -> None:
        if conn is None:
            return
        with contextlib.suppress(Exception):  # a broken connection may fail to close
            conn.close()

    def close(self) -> None:
        while self._idle:
            self._discard(self._idle.pop())
