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
from messenger.errors import Unavailable
from messenger.settings import Settings
from messenger.storage import shardmap
from messenger.storage.pools import Pool, ShardCursor, ShardFrozen
from messenger.storage.shards import DIRECTORY_SCHEMA, ShardMap, schema_name

logger = logging.getLogger(__name__)


class Router:
    """Maps ids to shards and hands out cursors on the right database and schema."""

    def __init__(
        self,
        shard_map: ShardMap,
        pools: dict[str, Pool],
        settings: Settings | None = None,
    ) -> None:
        # Replaced whole (never mutated) when the directory's epoch moves, so a
        # request reads one consistent map.
        self.shard_map = shard_map
        self.pools = pools
        self.settings = settings
        self.databases = dict(settings.resolved_databases()) if settings else {}

    @classmethod
    def from_settings(cls, settings: Settings, *, load_map: bool = True) -> Router:
        """A router on the directory's shard map (the settings' map while the
        directory has none yet: before the first `messenger migrate`).

        Raises:
            ConfigError: MESSENGER_SHARDS differs from the directory's N, or the
                map names a database MESSENGER_DATABASES lacks.
        """
        databases = settings.resolved_databases()
        shard_map = ShardMap(
            shards=settings.shards,
            ranges=settings.resolved_shard_map(),
            directory_dsn=settings.resolved_directory_url(),
            names=tuple(databases.items()),
        )
        router = cls(shard_map, {}, settings)
        for dsn in shard_map.dsns():
            router.pool(dsn)
        if load_map:
            router.load_map()
        return router

    def pool(self, dsn: str) -> Pool:
        """The pool of a database, made on first use (a map may name new ones)."""
        pool = self.pools.get(dsn)
        if pool is None:
            settings = self.settings
            if settings is None:
                raise KeyError(dsn)
            pool = self.pools[dsn] = Pool(
                dsn,
                size=settings.db_pool_size,
                checkout_timeout_secs=settings.db_checkout_timeout_secs,
                connect_timeout_secs=settings.db_connect_timeout_secs,
                statement_timeout_ms=settings.db_statement_timeout_ms,
            )
        return pool

    def resolve(self, stored: shardmap.StoredMap) -> ShardMap:
        settings_shards = self.settings.shards if self.settings else stored.shards
        return shardmap.resolve(
            stored,
            settings_shards=settings_shards,
            dsns=self.databases,
            directory_dsn=self.shard_map.directory_dsn,
        )

    def use_map(self, shard_map: ShardMap) -> None:
        for dsn in shard_map.dsns():
            self.pool(dsn)
        self.shard_map = shard_map

    def load_map(self) -> bool:
        """Route by the directory's map; False when it has none (yet) or does
        not answer (the follower keeps trying).

        Raises:
            ConfigError: as from_settings.
        """
        try:
            with self.directory("map_load", transaction=False) as cur:
                if not shardmap.has_map_tables(cur):
                    return False
                stored = shardmap.load_stored(cur)
        except Unavailable:
            logger.warning("shard map: the directory did not answer; using settings")
            return False
        if stored is None:
            return False
        self.use_map(self.resolve(stored))
        return True

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
        frozen = self.shard_map.frozen
        with self.pool(dsn).connection() as conn:
            if transaction:
                conn.autocommit = False
            try:
                cur = conn.cursor(cursor_factory=ShardCursor)
                cur.schema = schema
                cur.frozen = frozen
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

    def check_not_frozen(self, shard: int) -> None:
        """Raises ShardFrozen (503, Retry-After) while the shard is cut over."""
        if self.shard_map.is_frozen(shard):
            raise ShardFrozen(shard)

    def on_user(
        self, user_id: int, name: str, *, transaction: bool = True
    ) -> AbstractContextManager[ShardCursor]:
        """A cursor on the user's shard (events, mailbox, conversation list)."""
        self.check_not_frozen(self.shard_of(user_id))
        return self._cursor(
            self.dsn_of(user_id), self.schema_of(user_id), name, transaction=transaction
        )

    def on_conversation(
        self, conversation_id: int, name: str, *, transaction: bool = True
    ) -> AbstractContextManager[ShardCursor]:
        """A cursor on the conversation's shard (conversation, members, messages)."""
        self.check_not_frozen(self.shard_of(conversation_id))
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
