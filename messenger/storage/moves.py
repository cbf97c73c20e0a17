"""Move a logical shard to another database, online (`messenger move-shard`).

The copy is PostgreSQL's logical replication of the shard's tables: a
publication and a slot on the source, a subscription on the target (made with
`create_slot = false`, so source and target may share one server). The cut-over
is a write fence on that shard only, and holds nothing that grows with the shard:

1. freeze the shard in the map (requests touching it answer 503) and wait until
   every live worker routes by that epoch;
2. fence the source: a statement trigger on each of its tables raises, so a
   process still routing by an old map fails instead of writing;
3. write a marker through the fence and wait for it on the target (replication
   applies in commit order: everything before it has arrived), then move the
   sequences past the source's values;
4. open a REPEATABLE READ transaction on the target: its snapshot is the
   cut-over state (nothing can change the source any more, and nothing writes
   to the target before the switch);
5. switch the map to the target and unfreeze, in one epoch: the fence ends.

Then, with the shard serving from the target: compare row counts and checksums
per table between the fenced source and the target *as of that snapshot*
(writes since the switch are invisible to it), and end the replication.

Each step is recorded in `directory.shard_moves` once done, so a crashed move
resumes from there (run the same command again) or, before the switch, rolls
back (`abort_move`). After the switch there is nothing to roll back: the shard
takes writes in the target. A copy that differs from the source, or that cannot
be checked any more (the run holding the snapshot died), leaves the move open as
`unverified`, the error naming the tables: the old copy stays fenced for
comparison (drop_moved_shards keeps it) until `abort_move` closes the move.
The old copy of a moved shard stays, fenced, until `drop_moved_shards`.
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

# The steps of a move, in order; shard_moves.step holds the last one done. A
# verified move's row is deleted; "unverified" is a switched move whose check
# failed or was lost (see the module docstring).
STEPS = (
    "preflight",
    "target_migrated",
    "replicating",
    "copied",
    "frozen",
    "fenced",
    "caught_up",
    "switched",
    "unverified",
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
    # From the freeze to the switch: what requests to the shard waited.
    fence_secs: float = 0.0
    # The row counts and checksums, after the switch (no request waits on them).
    verify_secs: float = 0.0
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


def _checks(cur: psycopg2.extensions.cursor, schema: str) -> dict[str, TableCheck]:
    """Row count and an order-independent checksum of each table of a shard."""
    checks: dict[str, TableCheck] = {}
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


class CutoverState:
    """A REPEATABLE READ transaction on the move's target, opened after the
    catch-up and before the switch: what it reads is the shard at the cut-over,
    whatever the target takes after the switch. Read-only; its own connection,
    with no statement timeout (the checksums read the whole shard)."""

    def __init__(self, router: Router, move: Move) -> None:
        self.conn = _autocommit(router, _dsn(router, move.target))
        try:
            self.conn.autocommit = False
            self.conn.set_session(
                isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
                readonly=True,
            )
            with self.conn.cursor() as cur:
                # The transaction's first statement takes its snapshot; exported,
                # an operator can read the same state while the check runs.
                cur.execute("SELECT pg_export_snapshot()")
                logger.info(
                    "move of shard %s: the cut-over state is snapshot %s in %s",
                    move.shard,
                    cur.fetchone()[0],
                    move.target,
                )
                cur.execute("SET LOCAL statement_timeout = 0")
        except BaseException:
            self.conn.close()
            raise

    def checks(self, shard: int) -> dict[str, TableCheck]:
        with self.conn.cursor() as cur:
            return _checks(cur, schema_name(shard))

    def close(self) -> None:
        self.conn.close()


def _source_checks(router: Router, move: Move) -> dict[str, TableCheck]:
    """The fenced source's checks (nothing writes there any more), in one
    snapshot too, with no statement timeout."""
    conn = _autocommit(router, _dsn(router, move.source))
    try:
        conn.autocommit = False
        conn.set_session(
            isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
            readonly=True,
        )
        with conn.cursor() as cur:
            cur.execute("SET LOCAL statement_timeout = 0")
            return _checks(cur, schema_name(move.shard))
    finally:
        conn.close()


def _verify(
    router: Router, move: Move, cutover: CutoverState, result: MoveResult
) -> list[str]:
    """Compare the source with the target at the cut-over; the tables that differ."""
    source = _source_checks(router, move)
    target = cutover.checks(move.shard)
    result.tables = source
    result.rows = sum(c.rows for c in source.values())
    return sorted(t for t in source.keys() | target.keys()
                  if source.get(t) != target.get(t))  # fmt: skip


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


def _switch(router: Router, move: Move) -> tuple[Move, int]:
    """The map puts the shard in the target, unfrozen, and the move is
    recorded as switched, in one directory transaction; the epoch."""
    with router.directory("move_switch") as cur:
        epoch = shardmap.set_shard(cur, move.shard, database=move.target, state=ACTIVE)
        cur.execute(
            "INSERT INTO directory.shard_leftovers (shard, database) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            (move.shard, move.source),
        )
        cur.execute(
            "UPDATE directory.shard_moves SET step = 'switched', updated_at = now() "
            "WHERE shard = %s",
            (move.shard,),
        )
    return Move(move.shard, move.source, move.target, "switched"), epoch


def _close(router: Router, move: Move) -> None:
    with router.directory("move_close") as cur:
        cur.execute("DELETE FROM directory.shard_moves WHERE shard = %s", (move.shard,))


# Why a switched move is unverified (MoveError's message, with _unverified).
CHECK_LOST = (
    "the run that switched it ended before checking the copy, and the cut-over "
    "state the check reads ended with it"
)
CHECK_FAILED_BEFORE = (
    "its copy could not be verified (see the error of the run that switched it)"
)


def _unverified(move: Move, why: str) -> str:
    """The error of a switched move whose copy differs or cannot be checked."""
    return (
        f"Shard {move.shard} serves from {move.target} since the switch, but "
        f"{why}. Its old copy stays fenced in {move.source} to compare with; "
        f"`messenger move-shard {move.shard} --abort` then closes the move "
        f"(the shard stays in {move.target})."
    )


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
    503 (Retry-After) during the fence, which lasts about a second whatever the
    shard's size: the copy is verified after the switch, against the target's
    state at the cut-over.

    Raises:
        MoveError: a step cannot go on (the message says whether to resume or
            abort); the move's state stays recorded. After the switch: the
            copy differed from the source at the cut-over, or could not be
            checked any more; the shard serves from the target and the move
            stays open as `unverified`.
    """
    move = preflight(router, shard, target)
    result = MoveResult(shard, move.source, move.target)
    if move.done("unverified"):
        raise MoveError(_unverified(move, CHECK_FAILED_BEFORE))
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
    cutover: CutoverState | None = None
    if not move.done("switched"):
        fence_started = time.monotonic()
        if not move.done("frozen"):
            epoch = _set_state(router, shard, move.source, FROZEN)
            lagging = wait_for_followers(router, epoch, FREEZE_WAIT_SECS)
            if lagging:
                say(
                    f"move-shard {shard}: {len(lagging)} worker(s) did not confirm "
                    "the freeze; the fence stops them from writing"
                )
            move = _record(router, move, "frozen", on_step)
        if not move.done("fenced"):
            _fence(router, move, on=True)
            move = _record(router, move, "fenced", on_step)
        if not move.done("caught_up"):
            _catch_up(router, move)
            _move_sequences(router, move)
            move = _record(router, move, "caught_up", on_step)
        cutover = CutoverState(router, move)
    differ: list[str] | None = None  # None: not checked
    try:
        if cutover is not None:
            move, epoch = _switch(router, move)
            result.fence_secs = time.monotonic() - fence_started
            router.load_map()
            say(
                f"move-shard {shard}: now in {target} (epoch {epoch}); writes were "
                f"fenced for {result.fence_secs:.2f} s; verifying the copy as of "
                "the cut-over"
            )
            if on_step is not None:
                on_step("switched")
            verify_started = time.monotonic()
            differ = _verify(router, move, cutover, result)
            result.verify_secs = time.monotonic() - verify_started
    finally:
        if cutover is not None:
            cutover.close()
    _end_replication(router, move)
    if differ is None or differ:
        _record(router, move, "unverified", on_step)
        raise MoveError(
            _unverified(
                move,
                CHECK_LOST
                if differ is None
                else f"its copy in {move.target} differed from the source at the "
                f"cut-over in {', '.join(differ)}",
            )
        )
    _close(router, move)
    say(
        f"move-shard {shard}: verified {len(result.tables)} tables, {result.rows} "
        f"rows in {result.verify_secs:.2f} s (counts and checksums equal at the "
        "cut-over)"
    )
    lagging = wait_for_followers(router, router.shard_map.epoch, FREEZE_WAIT_SECS)
    if lagging:
        say(f"move-shard {shard}: {len(lagging)} worker(s) not yet at the new epoch")
    if on_step is not None:
        on_step("verified")
    return result


def abort_move(router: Router, shard: int, *, say: Say = _say_nothing) -> bool:
    """Roll back a move that has not switched: end the replication, unfence the
    source, unfreeze the shard there and drop the target's copy. A switched move
    (unverified, or whose run died before its check) is only closed: the shard
    stays in the target, which takes its writes, and the old copy stays fenced
    until drop_moved_shards. False if no move of the shard is under way."""
    move = current_move(router, shard)
    if move is None:
        return False
    _end_replication(router, move)
    if move.done("switched"):
        _close(router, move)
        say(
            f"move-shard {shard}: closed the move without its check; the shard "
            f"stays in {move.target}, its old copy fenced in {move.source} until "
            "`messenger drop-moved-shard`"
        )
        return True
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
        cur.execute("SELECT shard FROM directory.shard_moves")
        moving = {int(r[0]) for r in cur.fetchall()}
    dropped = []
    for left_shard, database in leftovers:
        if shard is not None and left_shard != shard:
            continue
        if left_shard in moving:
            # An unverified move's old copy is what its copy is compared with.
            say(
                f"drop-moved-shard: keeping {schema_name(left_shard)} in "
                f"{database}: its move is still open (finish or --abort it first)"
            )
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
