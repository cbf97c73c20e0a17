"""Move a logical shard to another database, online (`messenger move-shard`).

The copy is PostgreSQL's logical replication of the shard's tables: a
publication and a slot on the source, a subscription on the target (made with
`create_slot = false`, so source and target may share one server). The cut-over
is a write fence on that shard only:

1. freeze the shard in the map (requests touching it answer 503) and wait until
   every live worker routes by that epoch;
2. fence the source: a statement trigger on each of its tables raises, so a
   process still routing by an old map fails instead of writing;
3. write a marker through the fence and wait for it on the target (replication
   applies in commit order: everything before it has arrived);
4. move the sequences past the source's values, check row counts and checksums
   per table, end the replication;
5. switch the map to the target and unfreeze, in one epoch.

Each step is recorded in `directory.shard_moves` once done, so a crashed move
resumes from there (run the same command again) or rolls back (`abort_move`).
The old copy stays, fenced, until `drop_moved_shard`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from messenger.storage import shardmap
from messenger.storage.migrate import migrate_shard, shard_schemas_in
from messenger.storage.router import Router
from messenger.storage.shards import ACTIVE, FROZEN, schema_name

logger = logging.getLogger(__name__)

Say = Callable[[str], None]
# Called with each step's name once it is recorded (tests crash a move there).
OnStep = Callable[[str], None]

# The steps of a move, in order; shard_moves.step holds the last one done.
STEPS = (
    "preflight",
    "target_migrated",
    "replicating",
    "copied",
    "frozen",
    "fenced",
    "caught_up",
    "verified",
)
# Not part of the data: each copy has its own.
SKIPPED_TABLES = frozenset({"schema_migrations"})
# The initial copy of a large shard takes a while; it is bounded all the same.
COPY_TIMEOUT_SECS = 6 * 3600
# Workers poll the epoch every 0.2 s; one that has not answered in this long is
# hung or gone, and the fence stops it from writing anyway.
FREEZE_WAIT_SECS = 5.0
# Replication lag at the fence is normally milliseconds.
CATCH_UP_TIMEOUT_SECS = 30.0
# Creating the fence triggers waits for writers in flight; not for long.
FENCE_LOCK_TIMEOUT = "3s"
PROGRESS_EVERY_SECS = 1.0


class MoveError(Exception):
    """A move cannot go on; the message is one sentence saying what to do."""


@dataclass(frozen=True)
class TableCheck:
    rows: int
    checksum: str


@dataclass
class MoveResult:
    shard: int
    source: str
    target: str
    rows: int = 0
    copy_bytes: int = 0
    copy_secs: float = 0.0
    fence_secs: float = 0.0
    tables: dict[str, TableCheck] = field(default_factory=dict)


@dataclass(frozen=True)
class Move:
    shard: int
    source: str
    target: str
    step: str

    @property
    def replication_name(self) -> str:
        """The publication, slot and subscription of this move."""
        return f"messenger_move_{self.shard:04d}"

    def done(self, step: str) -> bool:
        return STEPS.index(self.step) >= STEPS.index(step)


def _say_nothing(text: str) -> None:
    logger.info("%s", text)


def _autocommit(router: Router, dsn: str) -> psycopg2.extensions.connection:
    """A connection of its own (CREATE SUBSCRIPTION refuses a transaction)."""
    return router.pool(dsn).connect_unpooled()


def current_move(router: Router, shard: int | None = None) -> Move | None:
    """The move in progress (of `shard`, else any)."""
    with router.directory("move_read", transaction=False) as cur:
        if shard is None:
            cur.execute(
                "SELECT shard, source, target, step FROM directory.shard_moves "
                "ORDER BY started_at LIMIT 1"
            )
        else:
            cur.execute(
                "SELECT shard, source, target, step FROM directory.shard_moves "
                "WHERE shard = %s",
                (shard,),
            )
        row = cur.fetchone()
    return None if row is None else Move(int(row[0]), row[1], row[2], row[3])


def _record(router: Router, move: Move, step: str, on_step: OnStep | None) -> Move:
    with router.directory("move_step") as cur:
        cur.execute(
            "UPDATE directory.shard_moves SET step = %s, updated_at = now() "
            "WHERE shard = %s",
            (step, move.shard),
        )
    move = Move(move.shard, move.source, move.target, step)
    if on_step is not None:
        on_step(step)
    return move


def _tables(cur: psycopg2.extensions.cursor, schema: str) -> list[str]:
    cur.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename",
        (schema,),
    )
    return [r[0] for r in cur.fetchall() if r[0] not in SKIPPED_TABLES]


def _schema_bytes(cur: psycopg2.extensions.cursor, schema: str) -> int:
    cur.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind = 'r'",
        (schema,),
    )
    return int(cur.fetchone()[0])


def _dsn(router: Router, name: str) -> str:
    dsn = router.databases.get(name)
    if dsn is None:
        raise MoveError(
            f"MESSENGER_DATABASES has no URL for {name}: add it on every process first."
        )
    return dsn


def preflight(router: Router, shard: int, target: str) -> Move:
    """Check a move can start (or resume) and record it.

    Raises:
        MoveError: the shard or target is wrong, another move is under way, the
            source cannot publish (wal_level), or the target already has the
            shard's schema.
    """
    router.load_map()
    shard_map = router.shard_map
    if not 0 <= shard < shard_map.shards:
        raise MoveError(
            f"There is no shard {shard}: shards are 0..{shard_map.shards - 1}."
        )
    existing = current_move(router)
    if existing is not None:
        if existing.shard != shard:
            raise MoveError(
                f"Shard {existing.shard} is being moved; one move at a time "
                "(finish it, or abort it with `messenger move-shard "
                f"{existing.shard} --abort`)."
            )
        if existing.target != target:
            raise MoveError(
                f"Shard {shard} is being moved to {existing.target}; resume that "
                "move or abort it first."
            )
        return existing
    source = shard_map.name_of_dsn(shard_map.dsn_of_shard(shard))
    if source == target:
        raise MoveError(f"Shard {shard} is already in {target}.")
    target_dsn = _dsn(router, target)
    source_dsn = _dsn(router, source)
    with router.directory("move_known", transaction=False) as cur:
        cur.execute(
            "SELECT 1 FROM directory.shard_databases WHERE name = %s", (target,)
        )
        if cur.fetchone() is None:
            raise MoveError(
                f"The directory does not know database {target}: run "
                f"`messenger add-database {target}=URL` first."
            )
    with router.on_dsn(source_dsn, "move_preflight", transaction=False) as cur:
        cur.execute("SHOW wal_level")
        wal_level = cur.fetchone()[0]
        if wal_level != "logical":
            raise MoveError(
                f"Database {source} has wal_level = {wal_level}: set wal_level = "
                "logical on its server and restart it."
            )
    if shard in shard_schemas_in(router, target_dsn):
        raise MoveError(
            f"Database {target} already has {schema_name(shard)}: drop that copy "
            f"first (`messenger drop-moved-shard {shard}` if a move left it)."
        )
    with router.directory("move_start") as cur:
        cur.execute(
            "INSERT INTO directory.shard_moves (shard, source, target, step) "
            "VALUES (%s, %s, %s, 'preflight')",
            (shard, source, target),
        )
    return Move(shard, source, target, "preflight")


def _start_replication(router: Router, move: Move) -> None:
    schema = schema_name(move.shard)
    name = move.replication_name
    source_dsn = _dsn(router, move.source)
    with router.on_dsn(source_dsn, "move_publish", transaction=False) as cur:
        tables = _tables(cur, schema)
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(name),
                    sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables),
                )
            )
        cur.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (name,))
        if cur.fetchone() is None:
            # Made here, not by CREATE SUBSCRIPTION: that would wait forever for
            # its own transaction when both databases share a server.
            cur.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,)
            )
    conn = _autocommit(router, _dsn(router, move.target))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL(
                        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH "
                        "(create_slot = false, slot_name = {}, copy_data = true)"
                    ).format(
                        sql.Identifier(name),
                        sql.Literal(source_dsn),
                        sql.Identifier(name),
                        sql.Literal(name),
                    )
                )
    finally:
        conn.close()


def _wait_copied(router: Router, move: Move, say: Say, result: MoveResult) -> None:
    schema = schema_name(move.shard)
    with router.on_dsn(
        _dsn(router, move.source), "move_size", transaction=False
    ) as cur:
        total_bytes = _schema_bytes(cur, schema)
    started = time.monotonic()
    deadline = started + COPY_TIMEOUT_SECS
    last_said = 0.0
    while True:
        with router.on_dsn(
            _dsn(router, move.target), "move_copy_state", transaction=False
        ) as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE sr.srsubstate = 'r'), count(*) "
                "FROM pg_subscription_rel sr "
                "JOIN pg_subscription s ON s.oid = sr.srsubid WHERE s.subname = %s",
                (move.replication_name,),
            )
            ready, tables = cur.fetchone()
            copied_bytes = _schema_bytes(cur, schema)
        now = time.monotonic()
        if tables and ready == tables:
            result.copy_secs = now - started
            result.copy_bytes = total_bytes
            say(
                f"move-shard {move.shard}: copied {tables} tables "
                f"({total_bytes / 1e6:.1f} MB) in {result.copy_secs:.1f} s"
            )
            return
        if now - last_said >= PROGRESS_EVERY_SECS:
            last_said = now
            say(
                f"move-shard {move.shard}: copying, {ready}/{tables} tables ready, "
                f"{copied_bytes / 1e6:.1f} of {total_bytes / 1e6:.1f} MB"
            )
        if now > deadline:
            raise MoveError(
                f"The copy of shard {move.shard} did not finish in "
                f"{COPY_TIMEOUT_SECS} s: see the target server's log; resume or abort."
            )
        time.sleep(0.2)


def _set_state(router: Router, shard: int, database: str, state: str) -> int:
    with router.directory("move_map") as cur:
        return shardmap.set_shard(cur, shard, database=database, state=state)


def wait_for_followers(router: Router, epoch: int, timeout_secs: float) -> list[str]:
    """Wait until every live worker routes by `epoch`; those that did not."""
    deadline = time.monotonic() + timeout_secs
    while True:
        with router.directory("move_followers", transaction=False) as cur:
            lagging = shardmap.lagging_followers(cur, epoch)
        if not lagging or time.monotonic() > deadline:
            return lagging
        time.sleep(0.05)


def _fence(router: Router, move: Move, *, on: bool) -> None:
    schema = schema_name(move.shard)
    with router.on_dsn(_dsn(router, move.source), "move_fence") as cur:
        cur.execute("SET LOCAL lock_timeout = %s", (FENCE_LOCK_TIMEOUT,))
        for table in _tables(cur, schema):
            if on:
                cur.execute(
                    sql.SQL(
                        "CREATE OR REPLACE TRIGGER move_fence BEFORE INSERT OR UPDATE "
                        "OR DELETE OR TRUNCATE ON {} FOR EACH STATEMENT "
                        "EXECUTE FUNCTION {}()"
                    ).format(
                        sql.Identifier(schema, table),
                        sql.Identifier(schema, "move_fence"),
                    )
                )
            else:
                cur.execute(
                    sql.SQL("DROP TRIGGER IF EXISTS move_fence ON {}").format(
                        sql.Identifier(schema, table)
                    )
                )


def _catch_up(router: Router, move: Move) -> None:
    schema = schema_name(move.shard)
    marker_id = time.time_ns()
    with router.on_dsn(_dsn(router, move.source), "move_marker") as cur:
        cur.execute("SET LOCAL messenger.move_fence_bypass = 'on'")
        cur.execute(
            sql.SQL("INSERT INTO {} (marker_id) VALUES (%s)").format(
                sql.Identifier(schema, "move_markers")
            ),
            (marker_id,),
        )
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_SECS
    query = sql.SQL("SELECT 1 FROM {} WHERE marker_id = %s").format(
        sql.Identifier(schema, "move_markers")
    )
    while True:
        with router.on_dsn(
            _dsn(router, move.target), "move_catch_up", transaction=False
        ) as cur:
            cur.execute(query, (marker_id,))
            if cur.fetchone() is not None:
                return
        if time.monotonic() > deadline:
            raise MoveError(
                f"Shard {move.shard}'s copy did not catch up in "
                f"{CATCH_UP_TIMEOUT_SECS} s; resume or abort the move."
            )
        time.sleep(0.01)


def _move_sequences(router: Router, move: Move) -> None:
    schema = schema_name(move.shard)
    with router.on_dsn(
        _dsn(router, move.source), "move_seqs", transaction=False
    ) as cur:
        cur.execute(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = %s",
            (schema,),
        )
        values = [(r[0], r[1]) for r in cur.fetchall() if r[1] is not None]
    with router.on_dsn(_dsn(router, move.target), "move_seqs") as cur:
        for name, value in values:
            cur.execute(
                "SELECT setval(%s::regclass, GREATEST(%s, "
                "(SELECT last_value FROM pg_sequences "
                "WHERE schemaname = %s AND sequencename = %s)), true)",
                (f'"{schema}"."{name}"', value, schema, name),
            )


def table_checks(router: Router, dsn: str, shard: int) -> dict[str, TableCheck]:
    """Row count and an order-independent checksum of each table of a shard."""
    schema = schema_name(shard)
    checks: dict[str, TableCheck] = {}
    with router.on_dsn(dsn, "move_verify", transaction=False) as cur:
        for table in _tables(cur, schema):
            if table == "move_markers":
                continue
            cur.execute(
                sql.SQL(
                    "SELECT count(*), coalesce(sum(('x' || left(md5(t::text), 16))"
                    "::bit(64)::bigint), 0)::text FROM {} AS t"
                ).format(sql.Identifier(schema, table))
            )
            rows, checksum = cur.fetchone()
            checks[table] = TableCheck(int(rows), str(checksum))
    return checks


def _verify(router: Router, move: Move, result: MoveResult) -> None:
    source = table_checks(router, _dsn(router, move.source), move.shard)
    target = table_checks(router, _dsn(router, move.target), move.shard)
    differ = sorted(t for t in source if source[t] != target.get(t))
    if differ:
        raise MoveError(
            f"Shard {move.shard}'s copy differs from the source in "
            f"{', '.join(differ)}; abort the move (`--abort`)."
        )
    result.tables = source
    result.rows = sum(c.rows for c in source.values())


def _end_replication(router: Router, move: Move) -> None:
    name = move.replication_name
    conn = _autocommit(router, _dsn(router, move.target))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,))
            if cur.fetchone() is not None:
                ident = sql.Identifier(name)
                cur.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                cur.execute(
                    sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(
                        ident
                    )
                )
                cur.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
    finally:
        conn.close()
    source_dsn = _dsn(router, move.source)
    deadline = time.monotonic() + 10
    while True:
        with router.on_dsn(source_dsn, "move_unpublish", transaction=False) as cur:
            cur.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (name,)
            )
            row = cur.fetchone()
            if row is None or not row[0]:
                if row is not None:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                cur.execute(
                    sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                        sql.Identifier(name)
                    )
                )
                return
        if time.monotonic() > deadline:
            raise MoveError(f"Replication slot {name} stays in use; try again.")
        time.sleep(0.1)


def _switch(router: Router, move: Move) -> int:
    with router.directory("move_switch") as cur:
        epoch = shardmap.set_shard(cur, move.shard, database=move.target, state=ACTIVE)
        cur.execute(
            "INSERT INTO directory.shard_leftovers (shard, database) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            (move.shard, move.source),
        )
        cur.execute("DELETE FROM directory.shard_moves WHERE shard = %s", (move.shard,))
    return epoch


def move_shard(
    router: Router,
    shard: int,
    target: str,
    *,
    say: Say = _say_nothing,
    on_step: OnStep | None = None,
) -> MoveResult:
    """Move a logical shard to database `target` online; resumes a crashed move.

    Requests touching other shards never wait; those touching this shard answer
    503 (Retry-After) during the fence, which lasts about a second.

    Raises:
        MoveError: a step cannot go on (the message says whether to resume or
            abort); the move's state stays recorded.
    """
    move = preflight(router, shard, target)
    result = MoveResult(shard, move.source, move.target)
    if move.step != "preflight":
        say(f"move-shard {shard}: resuming after step {move.step}")
    else:
        say(f"move-shard {shard}: preflight passed ({move.source} → {move.target})")
    schema = schema_name(shard)
    if not move.done("target_migrated"):
        migrate_shard(router, _dsn(router, target), shard)
        move = _record(router, move, "target_migrated", on_step)
        say(f"move-shard {shard}: made {schema} in {target}")
    if not move.done("replicating"):
        _start_replication(router, move)
        move = _record(router, move, "replicating", on_step)
    if not move.done("copied"):
        _wait_copied(router, move, say, result)
        move = _record(router, move, "copied", on_step)
    fence_started = time.monotonic()
    if not move.done("frozen"):
        epoch = _set_state(router, shard, move.source, FROZEN)
        lagging = wait_for_followers(router, epoch, FREEZE_WAIT_SECS)
        if lagging:
            say(
                f"move-shard {shard}: {len(lagging)} worker(s) did not confirm the "
                "freeze; the fence stops them from writing"
            )
        move = _record(router, move, "frozen", on_step)
    if not move.done("fenced"):
        _fence(router, move, on=True)
        move = _record(router, move, "fenced", on_step)
    if not move.done("caught_up"):
        _catch_up(router, move)
        _move_sequences(router, move)
        move = _record(router, move, "caught_up", on_step)
    if not move.done("verified"):
        _verify(router, move, result)
        _end_replication(router, move)
        move = _record(router, move, "verified", on_step)
    epoch = _switch(router, move)
    result.fence_secs = time.monotonic() - fence_started
    router.load_map()
    lagging = wait_for_followers(router, epoch, FREEZE_WAIT_SECS)
    say(
        f"move-shard {shard}: now in {target} (epoch {epoch}); writes were fenced "
        f"for {result.fence_secs:.2f} s"
        + (f"; {len(lagging)} worker(s) not yet at the new epoch" if lagging else "")
    )
    if on_step is not None:
        on_step("switched")
    return result


def abort_move(router: Router, shard: int, *, say: Say = _say_nothing) -> bool:
    """Roll back a move that has not switched: end the replication, unfence the
    source, unfreeze the shard there and drop the target's copy. False if no
    move of the shard is under way."""
    move = current_move(router, shard)
    if move is None:
        return False
    _end_replication(router, move)
    _fence(router, move, on=False)
    router.load_map()
    if router.shard_map.is_frozen(shard):
        _set_state(router, shard, move.source, ACTIVE)
    with router.on_dsn(_dsn(router, move.target), "move_abort") as cur:
        cur.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema_name(shard))
            )
        )
    with router.directory("move_abort") as cur:
        cur.execute("DELETE FROM directory.shard_moves WHERE shard = %s", (shard,))
    router.load_map()
    say(f"move-shard {shard}: aborted; the shard stays in {move.source}")
    return True


def drop_moved_shards(
    router: Router, shard: int | None = None, *, say: Say = _say_nothing
) -> list[tuple[int, str]]:
    """Drop the old copies moves left behind (of `shard`, else all)."""
    router.load_map()
    with router.directory("leftovers", transaction=False) as cur:
        cur.execute(
            "SELECT shard, database FROM directory.shard_leftovers ORDER BY shard"
        )
        leftovers = [(int(r[0]), str(r[1])) for r in cur.fetchall()]
    dropped = []
    for left_shard, database in leftovers:
        if shard is not None and left_shard != shard:
            continue
        dsn = _dsn(router, database)
        if router.shard_map.dsn_of_shard(left_shard) == dsn:
            raise MoveError(
                f"The map puts shard {left_shard} in {database}; not dropping it."
            )
        with router.on_dsn(dsn, "drop_moved") as cur:
            cur.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema_name(left_shard))
                )
            )
        with router.directory("drop_moved") as cur:
            cur.execute(
                "DELETE FROM directory.shard_leftovers "
                "WHERE shard = %s AND database = %s",
                (left_shard, database),
            )
        say(f"drop-moved-shard: dropped {schema_name(left_shard)} from {database}")
        dropped.append((left_shard, database))
    return dropped
