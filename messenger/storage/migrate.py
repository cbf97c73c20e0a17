"""Apply sql/*.sql in order to the directory and to every logical shard schema.

Each schema records what it has applied in its own `schema_migrations` table, so a
second run does nothing and a new file applies only itself, in one transaction per
file and schema.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from messenger.storage.router import Router
from messenger.storage.shards import DIRECTORY_SCHEMA, schema_name

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


def migrate(
    router: Router,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    sql_dir: Path = SQL_DIR,
) -> MigrateResult:
    """Bring the directory and every shard schema up to date.

    Args:
        router: names the databases and shards.
        progress: called as progress(done, total, label) after each schema.

    Returns:
        How many (file, schema) pairs were applied, and how many schemas exist.
    """
    shard_map = router.shard_map
    directory = load_migrations("directory", sql_dir)
    shard = load_migrations("shard", sql_dir)
    plan: list[tuple[str, str, list[Migration]]] = [
        (shard_map.directory_dsn, DIRECTORY_SCHEMA, directory)
    ]
    for dsn, shards in shard_map.shards_by_dsn().items():
        plan.extend((dsn, schema_name(s), shard) for s in shards)
    applied = 0
    total = len(plan)
    for dsn in shard_map.dsns():
        with router.pools[dsn].connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK_KEY,))
            try:
                for index, (plan_dsn, schema, migrations) in enumerate(plan, 1):
                    if plan_dsn != dsn:
                        continue
                    applied += _migrate_schema(conn, schema, migrations)
                    if progress:
                        progress(index, total, schema)
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK_KEY,))
    return MigrateResult(applied=applied, schemas=total)


def _migrate_schema(
    conn: psycopg2.extensions.connection, schema: str, migrations: list[Migration]
) -> int:
    with conn.cursor() as cur:
        done = _applied(cur, schema)
    count = 0
    for migration in migrations:
        if migration.name in done:
            continue
        conn.autocommit = False
        try:
            with conn.cursor() as cur:
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
        count += 1
    return count
