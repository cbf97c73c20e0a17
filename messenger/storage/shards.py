"""The shard map: logical shard of an id, its schema, and its physical database.

The map a process routes by is data in the directory (storage/shardmap.py): each
logical shard's database name and state, under an epoch that every change bumps.
The settings only seed a new deployment's map and give each database name its DSN.
"""

from __future__ import annotations

from dataclasses import dataclass

from messenger.settings import ConfigError, ShardRange

DIRECTORY_SCHEMA = "directory"

ACTIVE = "active"
# A frozen shard is being cut over to another database: requests touching it
# answer 503 with Retry-After until the map's next epoch.
FROZEN = "frozen"


def schema_name(shard: int) -> str:
    """The PostgreSQL schema of a logical shard, e.g. shard_0007."""
    return f"shard_{shard:04d}"


def shard_of_schema(schema: str) -> int | None:
    """The logical shard of a schema name (shard_0007 → 7); None for others."""
    if schema.startswith("shard_") and schema[6:].isdigit():
        return int(schema[6:])
    return None


@dataclass(frozen=True)
class ShardMap:
    """N logical shards (`shard_of(id) = id % N`), each a schema in one of the DSNs.

    `epoch` is the directory's version of the map (0: not read from a directory);
    `frozen` the shards that answer 503 for now; `names` each DSN's database name.
    """

    shards: int
    ranges: tuple[ShardRange, ...]
    directory_dsn: str
    epoch: int = 0
    frozen: frozenset[int] = frozenset()
    names: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        expected = 0
        for r in self.ranges:
            if r.first != expected or r.last < r.first:
                raise ConfigError("The shard map must cover every shard exactly once.")
            expected = r.last + 1
        if expected != self.shards:
            raise ConfigError(
                f"The shard map covers {expected} shards, but there are {self.shards}."
            )

    def shard_of(self, entity_id: int) -> int:
        return entity_id % self.shards

    def dsn_of_shard(self, shard: int) -> str:
        for r in self.ranges:
            if r.first <= shard <= r.last:
                return r.dsn
        raise ValueError(f"shard {shard} out of range")

    def is_frozen(self, shard: int) -> bool:
        return shard in self.frozen

    def name_of_dsn(self, dsn: str) -> str:
        for name, named_dsn in self.names:
            if named_dsn == dsn:
                return name
        return dsn

    def dsns(self) -> list[str]:
        """Every physical database, the directory's first, without repeats."""
        seen = [self.directory_dsn]
        for r in self.ranges:
            if r.dsn not in seen:
                seen.append(r.dsn)
        return seen

    def shards_by_dsn(self) -> dict[str, list[int]]:
        result: dict[str, list[int]] = {}
        for r in self.ranges:
            result.setdefault(r.dsn, []).extend(range(r.first, r.last + 1))
        return result


def ranges_of(dsn_by_shard: list[str]) -> tuple[ShardRange, ...]:
    """Contiguous ranges of a per-shard DSN list."""
    ranges: list[ShardRange] = []
    for shard, dsn in enumerate(dsn_by_shard):
        if ranges and ranges[-1].dsn == dsn:
            ranges[-1] = ShardRange(ranges[-1].first, shard, dsn)
        else:
            ranges.append(ShardRange(shard, shard, dsn))
    return tuple(ranges)
