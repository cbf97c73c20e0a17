"""One small, bounded, gevent-safe connection pool per physical database."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import gevent
import gevent.lock
import psycopg2
import psycopg2.extensions

from messenger import metrics
from messenger.errors import Unavailable
from messenger.storage.breaker import Breaker
from messenger.storage.shards import shard_of_schema

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


# A frozen shard's cut-over lasts about a second (messenger move-shard).
FROZEN_RETRY_AFTER_SECS = 1


class ShardFrozen(Unavailable):
    """The shard is frozen while it moves to another database."""

    def __init__(self, shard: int) -> None:
        super().__init__(
            f"Shard {shard} is moving to another database; try again.",
            retry_after=FROZEN_RETRY_AFTER_SECS,
        )
        self.shard = shard


class ShardCursor(psycopg2.extensions.cursor):
    """A cursor that knows which schema (logical shard) its statements target."""

    schema: str = "public"
    # The shards frozen in the map this cursor's transaction routes by.
    frozen: frozenset[int] = frozenset()

    def one(self, sql: str, params: Any = None) -> tuple[Any, ...]:
        """run() for a statement that always returns a row; the row."""
        row = self.run(sql, params).fetchone()
        if row is None:
            raise RuntimeError("statement returned no row")
        return row  # type: ignore[no-any-return]

    def run(self, sql: str, params: Any = None) -> ShardCursor:
        """Execute `sql` with `{s}` replaced by this cursor's schema.

        Raises:
            ShardFrozen: the schema's shard is frozen (being moved).
        """
        if self.frozen:
            shard = shard_of_schema(self.schema)
            if shard is not None and shard in self.frozen:
                raise ShardFrozen(shard)
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
        self.breaker = Breaker()

    @property
    def is_down(self) -> bool:
        """Whether the last call to this database failed (its breaker is open)."""
        return self.breaker.is_open

    def _connect(self) -> psycopg2.extensions.connection:
        # libpq's connect_timeout does not apply to the asynchronous connect the
        # gevent wait callback drives: a server that accepts TCP but never
        # answers (stopped, SIGSTOPped) is bounded here instead.
        timer = gevent.Timeout(self.connect_timeout_secs)
        timer.start()
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
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            metrics.DB_ERRORS.labels(database=self.label).inc()
            logger.warning(
                "database %s: no answer to a connect within %s s",
                self.label,
                self.connect_timeout_secs,
            )
            raise Unavailable(f"Database {self.label} did not answer.") from None
        finally:
            timer.close()
        conn.autocommit = True
        return conn

    def connect_unpooled(self) -> psycopg2.extensions.connection:
        """A connection of the caller's own (autocommit), outside the pool's
        bound; the caller closes it."""
        return self._connect()

    @contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """Check out a connection (autocommit on); broken ones are discarded.

        Raises:
            Unavailable: no connection within the checkout deadline, or the
                database failed while in use.
        """
        if not self.breaker.allow():
            retry = max(1, round(self.breaker.retry_in_secs))
            raise Unavailable(
                f"Database {self.label} is down; try again.", retry_after=retry
            )
        started = time.monotonic()
        if not self._slots.acquire(timeout=self.checkout_timeout_secs):
            metrics.DB_POOL_TIMEOUTS.labels(database=self.label).inc()
            raise Unavailable(f"Database {self.label} is busy; try again.")
        metrics.DB_POOL_WAIT.observe(time.monotonic() - started)
        conn = None
        try:
            try:
                conn = self._idle.pop() if self._idle else self._connect()
            except Unavailable:
                self.breaker.failed()
                raise
            yield conn
            self.breaker.succeeded()
        except _DB_ERRORS as exc:
            # An error the server reported (a deadlock, a cancelled statement)
            # says it is up; one without a SQLSTATE is the connection failing.
            if getattr(exc, "pgcode", None) is None:
                self.breaker.failed()
                # The server went away (or restarted): the idle connections are
                # as dead as this one. Left pooled, each would fail one more
                # request and keep the breaker open, probe after probe.
                self.close()
            self._discard(conn)
            conn = None
            metrics.DB_ERRORS.labels(database=self.label).inc()
            logger.warning(
                "database %s: %s",
                self.label,
                str(exc).strip().splitlines()[0] if str(exc) else exc,
            )
            raise Unavailable(f"Database {self.label} did not answer.") from None
        except BaseException as exc:
            # Includes gevent timeouts and greenlet kills mid-query: the connection's
            # state is unknown, so it is not reused. A timeout means the server
            # did not answer in time: a failure of the database, for the breaker.
            if isinstance(exc, gevent.Timeout):
                self.breaker.failed()
            elif not isinstance(exc, Unavailable):
                # An application error: the database answered.
                self.breaker.succeeded()
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
