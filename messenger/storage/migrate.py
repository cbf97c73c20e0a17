"""Apply sql/*.sql in order to the directory and to every logical shard schema.

Each schema records what it has applied in its own `schema_migrations` table, so a
second run does nothing and a new file applies only itself, in one transaction per
file and schema.

A directory migration that drops what a shard table took over (AFTER_SHARDS) runs
after every shard schema is migrated, in one transaction with the data step that
copies its rows to the shards.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions

from messenger.storage import conversations, shardmap
from messenger.storage.pools import ShardCursor
from messenger.storage.router import Router
from messenger.storage.shards import DIRECTORY_SCHEMA, schema_name, shard_of_schema

logger = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

# Serialises concurrent `messenger migrate` runs against one database.
_MIGRATE_LOCK_KEY = 7_302_115_001


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


@dataclass(frozen=True)
class MigrateResult:
    applied: int
    schemas: int
    # Rows the AFTER_SHARDS data steps copied from the directory to the shards.
    copied_rows: int = 0


def load_migrations(kind: str, sql_dir: Path = SQL_DIR) -> list[Migration]:
    """The migrations of one kind ("directory" or "shard"), in file name order."""
    folder = sql_dir / kind
    return [
        Migration(p.name, p.read_text(encoding="utf-8"))
        for p in sorted(folder.glob("*.sql"))
    ]


def _applied(cur: psycopg2.extensions.cursor, schema: str) -> set[str]:
    cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    cur.execute(
        f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
        " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    cur.execute(f'SELECT name FROM "{schema}".schema_migrations')
    return {row[0] for row in cur.fetchall()}


class MigrateRefused(Exception):
    """A shard schema exists where the map does not put it; one sentence."""


def migrate(
    router: Router,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    sql_dir: Path = SQL_DIR,
) -> MigrateResult:
    """Bring the directory and every shard schema up to date.

    The directory first: a new deployment's shard map is seeded there from the
    settings. Then each shard schema is made or updated only in the database
    the directory's map puts it in.

    Args:
        router: names the databases and shards.
        progress: called as progress(done, total, label) after each schema.

    Returns:
        How many (file, schema) pairs were applied, and how many schemas exist.

    Raises:
        MigrateRefused: a shard's schema already exists in another database
            than the map's (and is no move's target or leftover).
        ConfigError: MESSENGER_SHARDS differs from the directory's N.
    """
    directory = load_migrations("directory", sql_dir)
    later = [m for m in directory if m.name in AFTER_SHARDS]
    shard = load_migrations("shard", sql_dir)
    directory_dsn = router.shard_map.directory_dsn
    with router.pool(directory_dsn).connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK_KEY,))
        try:
            applied = _migrate_schema(
                conn, DIRECTORY_SCHEMA, [m for m in directory if m not in later]
            )
            _seed_map(conn, router)
            with conn.cursor() as check:
                done = _applied(check, DIRECTORY_SCHEMA)
            later = [m for m in later if m.name not in done]
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK_KEY,))
    router.load_map()
    shard_map = router.shard_map
    _check_placement(router)
    if later:
        _check_no_move(router, later)
    plan: list[tuple[str, str]] = []
    for dsn, shards in shard_map.shards_by_dsn().items():
        plan.extend((dsn, schema_name(s)) for s in shards)
    total = len(plan) + 1
    if progress:
        progress(1, total, DIRECTORY_SCHEMA)
    for dsn in shard_map.dsns():
        with router.pool(dsn).connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK_KEY,))
            try:
                for index, (plan_dsn, schema) in enumerate(plan, 2):
                    if plan_dsn != dsn:
                        continue
                    applied += _migrate_schema(conn, schema, shard)
                    if progress:
                        progress(index, total, schema)
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK_KEY,))
    copied = 0
    if later:
        with router.pool(directory_dsn).connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK_KEY,))
            try:
                for migration in later:
                    copied += _apply_after_shards(conn, router, migration)
                    applied += 1
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK_KEY,))
    return MigrateResult(applied=applied, schemas=total, copied_rows=copied)


def migrate_shard(router: Router, dsn: str, shard: int, sql_dir: Path = SQL_DIR) -> int:
    """Create or update one shard's schema in one database (a move's target)."""
    with router.pool(dsn).connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK_KEY,))
        try:
            return _migrate_schema(
                conn, schema_name(shard), load_migrations("shard", sql_dir)
            )
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK_KEY,))


def _seed_map(conn: psycopg2.extensions.connection, router: Router) -> None:
    settings = router.settings
    if settings is None:
        return
    conn.autocommit = False
    try:
        with conn.cursor(cursor_factory=ShardCursor) as cur:
            if shardmap.seed(
                cur,
                settings.shards,
                settings.resolved_shard_map(),
                settings.resolved_databases(),
            ):
                logger.info("shard map: seeded the directory from the settings")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True


def shard_schemas_in(router: Router, dsn: str) -> set[int]:
    """The logical shards whose schema exists in one database."""
    with router.on_dsn(dsn, "shard_schemas", transaction=False) as cur:
        cur.execute("SELECT nspname FROM pg_namespace WHERE nspname ~ '^shard_[0-9]+$'")
        found = {shard_of_schema(row[0]) for row in cur.fetchall()}
    return {s for s in found if s is not None}


def _check_placement(router: Router) -> None:
    shard_map = router.shard_map
    with router.directory("placement_exempt", transaction=False) as cur:
        cur.execute(
            "SELECT shard, database FROM directory.shard_leftovers "
            "UNION SELECT shard, target FROM directory.shard_moves"
        )
        exempt = {(int(r[0]), str(r[1])) for r in cur.fetchall()}
    for name, dsn in sorted(router.databases.items()):
        for shard in sorted(shard_schemas_in(router, dsn)):
            if shard >= shard_map.shards or shard_map.dsn_of_shard(shard) == dsn:
                continue
            if (shard, name) in exempt:
                continue
            raise MigrateRefused(
                f"{schema_name(shard)} already exists in database {name}, but the "
                f"shard map puts shard {shard} in "
                f"{shard_map.name_of_dsn(shard_map.dsn_of_shard(shard))}: move it "
                "with `messenger move-shard` or drop the stray copy."
            )


def _migrate_schema(
    conn: psycopg2.extensions.connection, schema: str, migrations: list[Migration]
) -> int:
    with conn.cursor() as cur:
        done = _applied(cur, schema)
    count = 0
    for migration in migrations:
        if migration.name in done:
            continue
        _apply(conn, schema, migration)
        count += 1
    return count


def _apply(
    conn: psycopg2.extensions.connection,
    schema: str,
    migration: Migration,
    before: Callable[[psycopg2.extensions.cursor], None] | None = None,
) -> None:
    """Apply one file to one schema and record it, in one transaction (with
    `before` run first in it)."""
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            if before is not None:
                before(cur)
            cur.execute(f'SET LOCAL search_path TO "{schema}"')
            cur.execute(migration.sql)
            cur.execute(
                f'INSERT INTO "{schema}".schema_migrations (name) VALUES (%s)',
                (migration.name,),
            )
        conn.commit()
    except Exception:
        conn.rollback()
        logger.error("migration %s failed on schema %s", migration.name, schema)
        raise
    finally:
        conn.autocommit = True
    logger.info("schema %s: applied %s", schema, migration.name)


# -- directory tables the shards took over -------------------------------------------

# Rows read from the directory per batch of a data step.
COPY_BATCH_ROWS = 10_000


def _copy_direct_pairs(router: Router, cur: psycopg2.extensions.cursor) -> int:
    """Copy directory.direct_pairs to the shard of each pair's lower user id.

    Runs in the transaction that then drops the table: the EXCLUSIVE lock keeps
    a worker of the previous release from claiming a pair meanwhile (it waits,
    then fails on the dropped table), so no pair is left behind. Each shard's
    rows commit before the drop does; a run that dies in between copies them
    again (a pair already on its shard is kept).

    Returns:
        How many pairs were new on their shards.
    """
    cur.execute(f"LOCK TABLE {DIRECTORY_SCHEMA}.direct_pairs IN EXCLUSIVE MODE")
    copied = 0
    # A server-side cursor: the pairs stream in batches, however many there are.
    with cur.connection.cursor(name="direct_pairs_copy") as rows:
        rows.execute(
            "SELECT user_lo, user_hi, conversation_id "
            f"FROM {DIRECTORY_SCHEMA}.direct_pairs"
        )
        while batch := rows.fetchmany(COPY_BATCH_ROWS):
            by_dsn: dict[str, dict[str, list[tuple[int, int, int]]]] = defaultdict(
                lambda: defaultdict(list)
            )
            for user_lo, user_hi, conversation_id in batch:
                by_dsn[router.dsn_of(user_lo)][router.schema_of(user_lo)].append(
                    (int(user_lo), int(user_hi), int(conversation_id))
                )
            for dsn, by_schema in by_dsn.items():
                with router.on_dsn(dsn, "migrate_direct_pairs") as shard_cur:
                    for schema, pairs in by_schema.items():
                        shard_cur.schema = schema
                        copied += conversations.copy_direct_pairs(shard_cur, pairs)
    logger.info("directory: copied %d direct pairs to their shards", copied)
    return copied


# Directory migrations applied after every shard schema is migrated (so after
# every other directory file, too), each with the data step that first copies
# the rows of what it drops to the shards, in the same transaction. Each step is
# idempotent and returns the rows it copied.
AFTER_SHARDS: dict[str, Callable[[Router, psycopg2.extensions.cursor], int]] = {
    "0080_direct_pairs_to_shards.sql": _copy_direct_pairs,
}


def _check_no_move(router: Router, later: list[Migration]) -> None:
    """Refuse to copy rows to the shards while one of them is being moved (its
    source may be fenced, its copy would miss rows written meanwhile)."""
    with router.directory("migrate_moves", transaction=False) as cur:
        cur.execute("SELECT shard FROM directory.shard_moves ORDER BY shard LIMIT 1")
        row = cur.fetchone()
    if row is not None:
        raise MigrateRefused(
            f"Shard {row[0]} is being moved, and {later[0].name} copies rows to "
            "every shard: finish the move (run it again) or abort it "
            f"(`messenger move-shard {row[0]} --abort`), then migrate."
        )


def _apply_after_shards(
    conn: psycopg2.extensions.connection, router: Router, migration: Migration
) -> int:
    copied = 0

    def copy(cur: psycopg2.extensions.cursor) -> None:
        nonlocal copied
        copied = AFTER_SHARDS[migration.name](router, cur)

    _apply(conn, DIRECTORY_SCHEMA, migration, before=copy)
    return copied
