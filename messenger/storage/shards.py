"""The shard map: logical shard of an id, its schema, and its physical database."""

from __future__ import annotations

from dataclasses import dataclass

from messenger.settings import ConfigError, ShardRange

DIRECTORY_SCHEMA = "directory"


def schema_name(shard: int) -> str:
    """The PostgreSQL schema of a logical shard, e.g. shard_0007."""
    return f"shard_{shard:04d}"


@dataclass(frozen=True)
class ShardMap:
    """N logical shards (`shard_of(id) = id % N`), each a schema in one of the DSNs."""

    shards: int
    ranges: tuple[ShardRange, ...]
    directory_dsn: str

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
