"""The shard map in the directory: read it, seed it, change it.

Every change bumps `shard_map_meta.epoch` in its own transaction; each routing
process follows it (storage/follower.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias

import psycopg2
import psycopg2.extensions

from messenger.settings import ConfigError, ShardRange
from messenger.storage.shards import ACTIVE, FROZEN, ShardMap, ranges_of

logger = logging.getLogger(__name__)

Cursor: TypeAlias = psycopg2.extensions.cursor

# Workers see a new epoch within about this long (the issue asks for ~1 s).
FOLLOW_INTERVAL_SECS = 0.2
# A follower rewrites its row at least this often, so a move can tell live
# workers (recent rows) from ones that exited.
HEARTBEAT_SECS = 3.0
# A follower row older than this belongs to a process that is gone.
FOLLOWER_ALIVE_SECS = 10.0


@dataclass(frozen=True)
class StoredMap:
    """The directory's map: N, epoch, each shard's database name and state."""

    shards: int
    epoch: int
    database_by_shard: tuple[str, ...]
    state_by_shard: tuple[str, ...]
    databases: tuple[str, ...]

    def shards_on(self, database: str) -> list[int]:
        return [s for s, d in enumerate(self.database_by_shard) if d == database]


def has_map_tables(cur: Cursor) -> bool:
    cur.execute("SELECT to_regclass('directory.shard_map_meta') IS NOT NULL")
    row = cur.fetchone()
    return bool(row and row[0])


def read_epoch(cur: Cursor) -> int | None:
    cur.execute("SELECT epoch FROM directory.shard_map_meta")
    row = cur.fetchone()
    return None if row is None else int(row[0])


def load_stored(cur: Cursor) -> StoredMap | None:
    """The directory's map; None when it was never seeded."""
    cur.execute("SELECT shards, epoch FROM directory.shard_map_meta")
    meta = cur.fetchone()
    if meta is None:
        return None
    shards, epoch = int(meta[0]), int(meta[1])
    cur.execute("SELECT shard, database, state FROM directory.shard_map ORDER BY shard")
    rows = cur.fetchall()
    if [r[0] for r in rows] != list(range(shards)):
        raise ConfigError(
            f"The shard map in the directory does not list shards 0..{shards - 1} "
            "exactly once."
        )
    cur.execute("SELECT name FROM directory.shard_databases ORDER BY added_at, name")
    names = tuple(r[0] for r in cur.fetchall())
    return StoredMap(
        shards,
        epoch,
        tuple(r[1] for r in rows),
        tuple(r[2] for r in rows),
        names,
    )


def resolve(
    stored: StoredMap,
    *,
    settings_shards: int,
    dsns: Mapping[str, str],
    directory_dsn: str,
) -> ShardMap:
    """The routing map of a stored map, with DSNs by name from the settings.

    Raises:
        ConfigError: MESSENGER_SHARDS differs from the directory's N, or a
            database the map uses has no DSN in MESSENGER_DATABASES.
    """
    if stored.shards != settings_shards:
        raise ConfigError(
            f"MESSENGER_SHARDS is {settings_shards} but the directory's shard map "
            f"has {stored.shards} shards; N is fixed for the life of a deployment."
        )
    missing = sorted(set(stored.database_by_shard) - set(dsns))
    if missing:
        raise ConfigError(
            f"MESSENGER_DATABASES has no URL for {', '.join(missing)}, which the "
            "directory's shard map uses."
        )
    return ShardMap(
        shards=stored.shards,
        ranges=ranges_of([dsns[name] for name in stored.database_by_shard]),
        directory_dsn=directory_dsn,
        epoch=stored.epoch,
        frozen=frozenset(
            s for s, state in enumerate(stored.state_by_shard) if state == FROZEN
        ),
        names=tuple(dsns.items()),
    )


def seed(
    cur: Cursor,
    shards: int,
    ranges: tuple[ShardRange, ...],
    dsns: Mapping[str, str],
) -> bool:
    """Write the settings' map into an unseeded directory; False if seeded.

    Run in a transaction; concurrent seeders agree through the meta row's key.
    """
    cur.execute(
        "INSERT INTO directory.shard_map_meta (shards) VALUES (%s) "
        "ON CONFLICT DO NOTHING RETURNING epoch",
        (shards,),
    )
    if cur.fetchone() is None:
        return False
    name_of = {dsn: name for name, dsn in dsns.items()}
    for name in dsns:
        cur.execute(
            "INSERT INTO directory.shard_databases (name) VALUES (%s) "
            "ON CONFLICT DO NOTHING",
            (name,),
        )
    for r in ranges:
        cur.execute(
            "INSERT INTO directory.shard_map (shard, database, state) "
            "SELECT s, %s, %s FROM generate_series(%s, %s) AS s",
            (name_of[r.dsn], ACTIVE, r.first, r.last),
        )
    return True


def bump_epoch(cur: Cursor) -> int:
    cur.execute("UPDATE directory.shard_map_meta SET epoch = epoch + 1 RETURNING epoch")
    row = cur.fetchone()
    if row is None:
        raise ConfigError("The directory has no shard map: run `messenger migrate`.")
    return int(row[0])


def set_shard(cur: Cursor, shard: int, *, database: str, state: str) -> int:
    """Place a shard and set its state; returns the new epoch."""
    cur.execute(
        "UPDATE directory.shard_map SET database = %s, state = %s WHERE shard = %s",
        (database, state, shard),
    )
    return bump_epoch(cur)


def add_database(cur: Cursor, name: str) -> bool:
    """Record a database shards may move to; False if already known."""
    cur.execute(
        "INSERT INTO directory.shard_databases (name) VALUES (%s) "
        "ON CONFLICT DO NOTHING RETURNING name",
        (name,),
    )
    return cur.fetchone() is not None


def note_follower(cur: Cursor, worker_id: str, epoch: int) -> None:
    cur.execute(
        "INSERT INTO directory.shard_map_followers (worker_id, epoch, seen_at) "
        "VALUES (%s, %s, now()) ON CONFLICT (worker_id) "
        "DO UPDATE SET epoch = EXCLUDED.epoch, seen_at = now()",
        (worker_id, epoch),
    )


def forget_follower(cur: Cursor, worker_id: str) -> None:
    cur.execute(
        "DELETE FROM directory.shard_map_followers WHERE worker_id = %s", (worker_id,)
    )


def lagging_followers(cur: Cursor, epoch: int) -> list[str]:
    """Live followers (recent rows) still routing by an epoch before `epoch`."""
    cur.execute(
        "SELECT worker_id FROM directory.shard_map_followers "
        "WHERE epoch < %s AND seen_at > now() - make_interval(secs => %s) "
        "ORDER BY worker_id",
        (epoch, FOLLOWER_ALIVE_SECS),
    )
    return [r[0] for r in cur.fetchall()]
