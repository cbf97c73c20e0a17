"""The shard router: named transactions on the shard that owns an id.

    with router.on_conversation(conversation_id, "history", transaction=False) as cur:
        found = messages.page(cur, conversation_id, user_id, limit=50)

Every transaction has a name (it appears in logs and metrics). The cursor knows its
schema (`cur.schema`), so query functions never build schema names themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import psycopg2.extensions

from messenger import metrics
from messenger.settings import Settings
from messenger.storage.pools import Pool, ShardCursor
from messenger.storage.shards import DIRECTORY_SCHEMA, ShardMap, schema_name

logger = logging.getLogger(__name__)


class Router:
    """Maps ids to shards and hands out cursors on the right database and schema."""

    def __init__(self, shard_map: ShardMap, pools: dict[str, Pool]) -> None:
        self.shard_map = shard_map
        self.pools = pools

    @classmethod
    def from_settings(cls, settings: Settings) -> Router:
        shard_map = ShardMap(
            shards=settings.shards,
            ranges=settings.resolved_shard_map(),
            directory_dsn=settings.resolved_directory_url(),
        )
        pools = {
            dsn: Pool(
                dsn,
                size=settings.db_pool_size,
                checkout_timeout_secs=settings.db_checkout_timeout_secs,
                connect_timeout_secs=settings.db_connect_timeout_secs,
                statement_timeout_ms=settings.db_statement_timeout_ms,
            )
            for dsn in shard_map.dsns()
        }
        return cls(shard_map, pools)

    # -- placement ---------------------------------------------------------------

    def shard_of(self, entity_id: int) -> int:
        return self.shard_map.shard_of(entity_id)

    def schema_of(self, entity_id: int) -> str:
        return schema_name(self.shard_of(entity_id))

    def dsn_of(self, entity_id: int) -> str:
        return self.shard_map.dsn_of_shard(self.shard_of(entity_id))

    # -- transactions ------------------------------------------------------------

    @contextmanager
    def _cursor(
        self, dsn: str, schema: str, name: str, *, transaction: bool
    ) -> Iterator[ShardCursor]:
        started = time.monotonic()
        with self.pools[dsn].connection() as conn:
            if transaction:
                conn.autocommit = False
            try:
                cur = conn.cursor(cursor_factory=ShardCursor)
                cur.schema = schema
                try:
                    yield cur
                finally:
                    cur.close()
                if transaction:
                    conn.commit()
            except BaseException:
                if transaction and not conn.closed:
                    try:
                        conn.rollback()
                    except psycopg2.Error:
                        conn.close()
                raise
            finally:
                if not conn.closed:
                    conn.autocommit = True
        metrics.DB_TRANSACTION_SECONDS.labels(name=name).observe(
            time.monotonic() - started
        )

    def on_user(
        self, user_id: int, name: str, *, transaction: bool = True
    ) -> AbstractContextManager[ShardCursor]:
        """A cursor on the user's shard (events, mailbox, conversation list)."""
        return self._cursor(
            self.dsn_of(user_id), self.schema_of(user_id), name, transaction=transaction
        )

    def on_conversation(
        self, conversation_id: int, name: str, *, transaction: bool = True
    ) -> AbstractContextManager[ShardCursor]:
        """A cursor on the conversation's shard (conversation, members, messages)."""
        return self._cursor(
            self.dsn_of(conversation_id),
            self.schema_of(conversation_id),
            name,
            transaction=transaction,
        )

    def directory(
        self, name: str, *, transaction: bool = True
    ) -> AbstractContextManager[ShardCursor]:
        """A cursor on the directory (global ids, handles, sessions)."""
        return self._cursor(
            self.shard_map.directory_dsn,
            DIRECTORY_SCHEMA,
            name,
            transaction=transaction,
        )

    def on_dsn(
        self, dsn: str, name: str, *, transaction: bool = True
    ) -> AbstractContextManager[ShardCursor]:
        """A cursor on one physical database; set `cur.schema` per statement group.

        Used to batch work for several shards that share a database into one
        transaction (fan-out, sweeps).
        """
        return self._cursor(dsn, "public", name, transaction=transaction)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
