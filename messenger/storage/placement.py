"""Where the shards are and how big: `messenger shards`, and the plan of
`messenger rebalance` (spread the logical shards evenly over the databases)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from messenger.settings import ConfigError
from messenger.storage import shardmap
from messenger.storage.router import Router
from messenger.storage.shards import schema_name


@dataclass(frozen=True)
class ShardInfo:
    shard: int
    database: str
    state: str
    size_bytes: int
    # Live rows per table (PostgreSQL's statistics: exact after ANALYZE).
    rows: dict[str, int]


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    shards: int
    connections: int
    size_bytes: int
    reachable: bool


@dataclass(frozen=True)
class Report:
    shards: int
    epoch: int
    shard_infos: list[ShardInfo]
    databases: list[DatabaseInfo]
    moving: str | None


def stored_map(router: Router) -> shardmap.StoredMap:
    with router.directory("map_read", transaction=False) as cur:
        stored = shardmap.load_stored(cur)
    if stored is None:
        raise ConfigError(
            "The directory has no shard map yet: run `messenger migrate`."
        )
    return stored


def report(router: Router) -> Report:
    """The map, each shard's size and rows, each database's load."""
    stored = stored_map(router)
    infos: list[ShardInfo] = []
    databases: list[DatabaseInfo] = []
    for name in stored.databases:
        shards = stored.shards_on(name)
        dsn = router.databases.get(name)
        if dsn is None:
            databases.append(DatabaseInfo(name, len(shards), 0, 0, False))
            continue
        with router.on_dsn(dsn, "shards_report", transaction=False) as cur:
            cur.execute(
                "SELECT (SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database()), "
                "pg_database_size(current_database())"
            )
            connections, size = cur.fetchone()
            databases.append(DatabaseInfo(name, len(shards), connections, size, True))
            schemas = [schema_name(s) for s in shards]
            cur.execute(
                "SELECT schemaname, relname, n_live_tup, "
                "pg_total_relation_size(relid) FROM pg_stat_user_tables "
                "WHERE schemaname = ANY (%s) AND relname <> 'schema_migrations'",
                (schemas,),
            )
            rows: dict[str, dict[str, int]] = {s: {} for s in schemas}
            sizes: dict[str, int] = {s: 0 for s in schemas}
            for schema, table, live, table_bytes in cur.fetchall():
                rows[schema][table] = int(live)
                sizes[schema] += int(table_bytes)
        for shard in shards:
            schema = schema_name(shard)
            infos.append(
                ShardInfo(
                    shard,
                    name,
                    stored.state_by_shard[shard],
                    sizes[schema],
                    rows[schema],
                )
            )
    infos.sort(key=lambda i: i.shard)
    with router.directory("moves_read", transaction=False) as cur:
        cur.execute("SELECT shard, source, target, step FROM directory.shard_moves")
        row = cur.fetchone()
    moving = None if row is None else f"shard {row[0]} {row[1]} → {row[2]} ({row[3]})"
    return Report(stored.shards, stored.epoch, infos, databases, moving)


def plan_rebalance(
    stored: shardmap.StoredMap, usable: Collection[str] | None = None
) -> list[tuple[int, str, str]]:
    """The moves (shard, from, to) that leave every database with N/D shards
    (the fullest N % D one more), moving as few shards as possible.

    Args:
        usable: the databases shards may go to (those with a URL here); all the
            directory knows by default.
    """
    names = sorted(
        set(stored.databases) & set(usable) if usable is not None else stored.databases
    )
    if not names:
        return []
    placement = list(stored.database_by_shard)
    count = {n: placement.count(n) for n in set(names) | set(placement)}
    base, extra = divmod(stored.shards, len(names))
    # Databases already holding the most keep the extra shards: fewer moves.
    by_load = sorted(names, key=lambda n: (-count[n], n))
    want = {n: base + (1 if i < extra else 0) for i, n in enumerate(by_load)}
    # A database without a URL here keeps nothing: its shards move away.
    stranded = [n for n in count if n not in want]
    for n in stranded:
        want[n] = 0
    by_load = stranded + by_load
    moves: list[tuple[int, str, str]] = []
    for _ in range(stored.shards):
        over = [n for n in by_load if count[n] > want[n]]
        under = [n for n in sorted(names) if count[n] < want[n]]
        if not over or not under:
            break
        source, target = over[0], under[0]
        shard = max(s for s, n in enumerate(placement) if n == source)
        placement[shard] = target
        count[source] -= 1
        count[target] += 1
        moves.append((shard, source, target))
    return moves
