"""`messenger backup FILE` and `messenger restore FILE`: every database in one archive.

The archive is a tar holding manifest.json and one pg_dump (custom format) per
physical database: the directory and every logical shard schema, whatever database
holds them. pg_dump and pg_restore are taken beside the PostgreSQL server binaries
the embedded default uses (messenger.embedded.binaries), else from the PATH.

What "consistent" means with several physical databases
-------------------------------------------------------
Each database's dump is one MVCC snapshot (pg_dump --snapshot), so everything inside
one database is exactly as some committed moment left it. Across databases there is
no common moment; what keeps the whole consistent is how writes cross databases:

- A message, its seq bump and its outbox row commit in one transaction on the
  conversation's database. Members on other databases get their events from a
  fan-out that writes their database first and deletes the outbox row after
  (services/fanout.py); the sweeper replays outbox rows left behind, and every
  write of a fan-out is idempotent (mailbox key, event origin), so a replay after
  restore adds only what is missing (workers/sweeper.py).
- That holds for a backup only if no outbox row is deleted between the snapshots
  of two databases: with snapshot B taken before a fan-out wrote B and snapshot A
  taken after the same fan-out deleted its row in A, neither the events nor the
  row would be in the backup. So the snapshots are taken while SHARE locks on
  every outbox table are held (no outbox row can be added or deleted meanwhile);
  the locks last milliseconds, not the dump.
- The directory is snapshotted last: every user, conversation and device id in
  a shard was drawn from its global_ids sequence before, so the restored sequence
  never hands out an id twice. A user registered between the snapshots may miss
  its user_state row on its shard; restore creates it (as registration would).
- A direct conversation's pair lives on the shard of its lower user id, maybe
  another database than the conversation's. The pair is claimed (and committed)
  before the conversation is created, and creating it writes an outbox row in
  the same transaction: so a conversation in any snapshot was committed before
  the outbox locks were granted, its pair even earlier, and every snapshot has
  the pair. A pair whose conversation missed the snapshots heals on the next
  "get or create" (services/conversations.py), as after a crash.

So a restore gives: each database exactly as at its snapshot, every acknowledged
message of those snapshots, and events owed to other databases' members replayed
by the sweeper once the service runs.

Attachments do not exist yet; when they do, the local backend's files belong in the
archive next to the dumps (and in the manifest).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from messenger.settings import Settings
from messenger.storage.pools import ShardCursor, describe_dsn
from messenger.storage.shards import DIRECTORY_SCHEMA, ShardMap, schema_name

# The archive's manifest. When a field is added, readers of the same
# FORMAT_VERSION must still accept archives without it; bump FORMAT_VERSION when an
# older restore could not load the new archive correctly.
MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "messenger-backup"
FORMAT_VERSION = 1
MIGRATIONS_TABLE = "schema_migrations"
# Tables that describe one deployment, not its data: which migrations ran and
# where its shards live (storage/shardmap.py). A restore's own migrate writes
# them for the target.
DEPLOYMENT_TABLES = frozenset(
    {
        MIGRATIONS_TABLE,
        "shard_map_meta",
        "shard_databases",
        "shard_map",
        "shard_map_followers",
        "shard_moves",
        "shard_leftovers",
    }
)
# Waiting for the outbox locks behind a long transaction; then try again.
LOCK_TIMEOUT_MS = 5_000
LOCK_ATTEMPTS = 3
CONNECT_TIMEOUT_SECS = 10

# A pg_restore table of contents line: "215; 0 16400 TABLE DATA shard_0000 t owner".
_TOC_DATA = re.compile(r"^\d+; \d+ \d+ (TABLE DATA|SEQUENCE SET) (\S+) (\S+) ")

Say = Callable[[str], None]


class BackupError(Exception):
    """A backup or restore cannot go on; the message is one sentence."""


@dataclass(frozen=True)
class DatabasePlan:
    """One physical database and the schemas it holds."""

    dsn: str
    schemas: tuple[str, ...]


def plan_databases(shard_map: ShardMap) -> list[DatabasePlan]:
    """Every physical database with its schemas, the directory's database last."""
    by_dsn = {dsn: [schema_name(s) for s in shards] for dsn, shards in
              shard_map.shards_by_dsn().items()}  # fmt: skip
    by_dsn.setdefault(shard_map.directory_dsn, []).insert(0, DIRECTORY_SCHEMA)
    order = sorted(by_dsn, key=lambda dsn: dsn == shard_map.directory_dsn)
    return [DatabasePlan(dsn, tuple(by_dsn[dsn])) for dsn in order]


def shard_map_of(settings: Settings) -> ShardMap:
    """The directory's shard map (where shards live after moves), else the
    settings' map (an unmigrated deployment)."""
    from messenger.storage.router import Router

    router = Router.from_settings(settings)
    router.close()
    return router.shard_map


def find_pg_tool(name: str) -> str:
    """pg_dump or pg_restore: beside the embedded server binaries, else on PATH.

    Raises:
        BackupError: neither has it (the message says what to install).
    """
    from messenger.embedded.binaries import find_postgres_binaries

    with contextlib.suppress(RuntimeError):
        candidate = find_postgres_binaries().bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise BackupError(
        f"{name} was not found beside the PostgreSQL server binaries nor on the "
        "PATH: install it (apt-get install postgresql-client)."
    )


def _connect(dsn: str) -> psycopg2.extensions.connection:
    try:
        return psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECS)
    except psycopg2.OperationalError as exc:
        raise BackupError(
            f"Database {describe_dsn(dsn)} did not answer "
            f"({str(exc).strip().splitlines()[0]})."
        ) from None


def _tables(cur: Any, schemas: tuple[str, ...]) -> list[tuple[str, str]]:
    cur.execute(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(%s) "
        "ORDER BY schemaname, tablename",
        (list(schemas),),
    )
    return [(str(s), str(t)) for s, t in cur.fetchall()]


def dbname_argument(dsn: str) -> tuple[str, dict[str, str]]:
    """--dbname=URI without its password, and the environment carrying it:
    a password on a command line is readable by every user of the host (ps)."""
    parts = urlsplit(dsn)
    env = dict(os.environ)
    if parts.password is None:
        return f"--dbname={dsn}", env
    env["PGPASSWORD"] = unquote(parts.password)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    stripped = urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}"))
    return f"--dbname={stripped}", env


def _run(args: list[str], what: str, dsn: str | None = None) -> str:
    env = None
    if dsn is not None:
        dbname, env = dbname_argument(dsn)
        args = [*args, dbname]
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    if result.returncode != 0:
        raise BackupError(
            f"{what} failed (exit {result.returncode}): {result.stderr.strip()[-1500:]}"
        )
    return result.stdout


def _size(num_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{num_bytes:.0f} B"
        num_bytes /= 1024
    return ""


def _table_totals(databases: list[dict[str, Any]]) -> dict[str, int]:
    """Rows per table name over every schema ("messages": all shards' messages)."""
    totals: dict[str, int] = {}
    for database in databases:
        for qualified, count in database["rows"].items():
            schema, _, table = qualified.partition(".")
            key = "directory." + table if schema == DIRECTORY_SCHEMA else table
            totals[key] = totals.get(key, 0) + count
    return dict(sorted(totals.items()))


# ---------------------------------------------------------------------- backup


@dataclass(frozen=True)
class Summary:
    """What a backup or restore moved."""

    path: Path
    bytes: int
    rows: dict[str, int]
    seconds: float


@contextlib.contextmanager
def _snapshots(plans: list[DatabasePlan], say: Say) -> Iterator[list[tuple[Any, str]]]:
    """Open one REPEATABLE READ transaction per database, exported for pg_dump,
    all taken while no outbox row can be added or deleted (see the module
    docstring); yields (connection, snapshot id) per plan."""
    snaps: list[tuple[Any, str]] = []
    try:
        for attempt in range(1, LOCK_ATTEMPTS + 1):
            lockers: list[Any] = []
            try:
                for plan in plans:
                    conn = _connect(plan.dsn)
                    lockers.append(conn)
                    with conn.cursor() as cur:
                        cur.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
                        outboxes = [
                            sql.Identifier(schema, "outbox")
                            for schema, table in _tables(cur, plan.schemas)
                            if table == "outbox"
                        ]
                        if outboxes:
                            cur.execute(
                                sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                                    sql.SQL(", ").join(outboxes)
                                )
                            )
                # Every outbox is still now: take the snapshots, directory's last.
                for plan in plans:
                    conn = _connect(plan.dsn)
                    conn.set_session(
                        isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
                        readonly=True,
                    )
                    snaps.append((conn, ""))
                    with conn.cursor() as cur:
                        cur.execute("SELECT pg_export_snapshot()")
                        snaps[-1] = (conn, str(cur.fetchone()[0]))
                break
            except psycopg2.errors.LockNotAvailable:
                for conn, _ in snaps:
                    conn.close()
                snaps = []
                say(f"backup: outbox locks busy (attempt {attempt}); trying again")
                if attempt == LOCK_ATTEMPTS:
                    raise BackupError(
                        "The outbox tables stayed locked by other transactions; "
                        "try the backup again."
                    ) from None
            finally:
                for conn in lockers:
                    conn.close()  # rolls back: the locks go
        yield snaps
    finally:
        for conn, _ in snaps:
            conn.close()


def _describe(
    conn: Any, plan: DatabasePlan
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Rows per schema.table and applied migrations per schema, in the snapshot."""
    rows: dict[str, int] = {}
    migrations: dict[str, list[str]] = {}
    with conn.cursor() as cur:
        for schema, table in _tables(cur, plan.schemas):
            if table == MIGRATIONS_TABLE:
                cur.execute(
                    sql.SQL("SELECT name FROM {} ORDER BY name").format(
                        sql.Identifier(schema, table)
                    )
                )
                migrations[schema] = [r[0] for r in cur.fetchall()]
                continue
            if table in DEPLOYMENT_TABLES:
                continue
            cur.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            )
            rows[f"{schema}.{table}"] = int(cur.fetchone()[0])
    missing = sorted(set(plan.schemas) - set(migrations))
    if missing:
        raise BackupError(
            f"Database {describe_dsn(plan.dsn)} lacks the schemas "
            f"{', '.join(missing)}: run `messenger migrate` first."
        )
    return rows, migrations


def _migrations_by_kind(per_schema: dict[str, list[str]]) -> dict[str, list[str]]:
    """{"directory": [...], "shard": [...]}; every shard schema must agree."""
    shard_lists = {tuple(v) for k, v in per_schema.items() if k != DIRECTORY_SCHEMA}
    if len(shard_lists) > 1:
        raise BackupError(
            "The shard schemas are at different migrations: run `messenger migrate` "
            "first."
        )
    return {
        "directory": per_schema.get(DIRECTORY_SCHEMA, []),
        "shard": list(next(iter(shard_lists), ())),
    }


def backup(settings: Settings, path: Path, say: Say) -> Summary:
    """Write a consistent snapshot of the directory and every shard to path.

    The archive appears at path only once complete (written beside it first).

    Raises:
        BackupError: a database is down or unmigrated, or pg_dump failed.
    """
    started = time.monotonic()
    shard_map = shard_map_of(settings)
    plans = plan_databases(shard_map)
    pg_dump = find_pg_tool("pg_dump")
    path = path.absolute()
    if not path.parent.is_dir():
        raise BackupError(f"The folder {path.parent} does not exist.")
    work = Path(tempfile.mkdtemp(prefix=".backup-", dir=path.parent))
    names = {plan.dsn: f"db{index}" for index, plan in enumerate(plans)}
    databases: list[dict[str, Any]] = []
    per_schema: dict[str, list[str]] = {}
    try:
        say(f"backup: snapshotting {len(plans)} database(s) ({pg_dump})")
        with _snapshots(plans, say) as snaps:
            for index, (plan, (conn, snapshot_id)) in enumerate(
                zip(plans, snaps, strict=True), 1
            ):
                dump_started = time.monotonic()
                rows, migrations = _describe(conn, plan)
                per_schema.update(migrations)
                with conn.cursor() as cur:
                    cur.execute("SHOW server_version")
                    server_version = cur.fetchone()[0]
                name = names[plan.dsn]
                target = work / f"{name}.dump"
                args = [pg_dump, "--format=custom", "--no-owner", "--no-privileges"]
                args += [f"--snapshot={snapshot_id}", f"--file={target}"]
                args += [f"--schema={schema}" for schema in plan.schemas]
                # Which migrations ran is in the manifest; a restore migrates first.
                args += [f"--exclude-table-data=*.{t}" for t in DEPLOYMENT_TABLES]
                _run(args, f"pg_dump of {describe_dsn(plan.dsn)}", plan.dsn)
                size = target.stat().st_size
                databases.append(
                    {
                        "name": name,
                        "file": target.name,
                        "source": describe_dsn(plan.dsn),
                        "server_version": server_version,
                        "schemas": list(plan.schemas),
                        "bytes": size,
                        "rows": rows,
                    }
                )
                say(
                    f"backup: database {index}/{len(plans)} {describe_dsn(plan.dsn)} "
                    f"({len(plan.schemas)} schemas): {sum(rows.values()):,} rows, "
                    f"{_size(size)} in {time.monotonic() - dump_started:.1f} s"
                )
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "shards": shard_map.shards,
            "shard_map": [
                {"first": r.first, "last": r.last, "database": names[r.dsn]}
                for r in shard_map.ranges
            ],
            "directory_database": names[shard_map.directory_dsn],
            "migrations": _migrations_by_kind(per_schema),
            "databases": databases,
        }
        (work / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        partial = work / "archive.tar"
        with tarfile.open(partial, "w") as tar:
            tar.add(work / MANIFEST_NAME, arcname=MANIFEST_NAME)
            for database in databases:
                tar.add(work / database["file"], arcname=database["file"])
        partial.replace(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = Summary(
        path, path.stat().st_size, _table_totals(databases), time.monotonic() - started
    )
    _say_summary("backup", summary, say)
    return summary


def _say_summary(verb: str, summary: Summary, say: Say) -> None:
    rows = sum(summary.rows.values())
    say(
        f"{verb}: {summary.path}: {_size(summary.bytes)}, {rows:,} rows in "
        f"{summary.seconds:.1f} s ({rows / max(summary.seconds, 1e-3):,.0f} rows/s, "
        f"{_size(summary.bytes / max(summary.seconds, 1e-3))}/s)"
    )
    for table, count in summary.rows.items():
        say(f"{verb}:   {table:<28} {count:>12,}")


# --------------------------------------------------------------------- restore


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an archive, checked for format and version.

    Raises:
        BackupError: not a messenger backup, or a newer format.
    """
    try:
        with tarfile.open(path) as tar:
            member = tar.extractfile(MANIFEST_NAME)
            if member is None:
                raise KeyError(MANIFEST_NAME)
            manifest: dict[str, Any] = json.load(member)
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        raise BackupError(f"{path} is not a messenger backup ({exc}).") from None
    if manifest.get("format") != FORMAT_NAME:
        raise BackupError(f"{path} is not a messenger backup.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(
            f"{path} has backup format {manifest.get('format_version')}; this version "
            f"reads format {FORMAT_VERSION}."
        )
    return manifest


def rows_held(plans: list[DatabasePlan]) -> list[str]:
    """schema.table names (in plans' schemas) holding at least one row."""
    found: list[str] = []
    for plan in plans:
        conn = _connect(plan.dsn)
        try:
            with conn.cursor() as cur:
                for schema, table in _tables(cur, plan.schemas):
                    if table in DEPLOYMENT_TABLES:
                        continue
                    cur.execute(
                        sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
                            sql.Identifier(schema, table)
                        )
                    )
                    if cur.fetchone()[0]:
                        found.append(f"{describe_dsn(plan.dsn)} {schema}.{table}")
        finally:
            conn.close()
    return found


def _count_rows(plans: list[DatabasePlan]) -> list[dict[str, Any]]:
    """Rows per schema.table of each database now, shaped like the manifest's."""
    counted: list[dict[str, Any]] = []
    for plan in plans:
        conn = _connect(plan.dsn)
        try:
            counted.append({"rows": _describe(conn, plan)[0]})
        finally:
            conn.close()
    return counted


def _applied_migrations(plans: list[DatabasePlan]) -> dict[str, list[str]]:
    per_schema: dict[str, list[str]] = {}
    for plan in plans:
        conn = _connect(plan.dsn)
        try:
            per_schema.update(_describe(conn, plan)[1])
        finally:
            conn.close()
    return _migrations_by_kind(per_schema)


# Users registered between the shard and directory snapshots (see the docstring).
_INSERT_MISSING_USER_STATES = """
INSERT INTO {s}.user_state (user_id)
SELECT user_id FROM unnest(%s::bigint[]) AS u (user_id)
ON CONFLICT DO NOTHING
"""


def _ensure_user_states(shard_map: ShardMap, say: Say) -> int:
    """Create the user_state rows of users registered between the snapshots."""
    conn = _connect(shard_map.directory_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT user_id FROM {}").format(
                    sql.Identifier(DIRECTORY_SCHEMA, "users")
                )
            )
            user_ids = [int(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()
    by_shard: dict[int, list[int]] = {}
    for user_id in user_ids:
        by_shard.setdefault(shard_map.shard_of(user_id), []).append(user_id)
    created = 0
    for dsn, shards in shard_map.shards_by_dsn().items():
        conn = _connect(dsn)
        try:
            with conn, conn.cursor(cursor_factory=ShardCursor) as cur:
                for shard in shards:
                    if shard in by_shard:
                        cur.schema = schema_name(shard)
                        cur.run(_INSERT_MISSING_USER_STATES, (by_shard[shard],))
                        created += cur.rowcount
        finally:
            conn.close()
    if created:
        say(f"restore: created the event counters of {created} users")
    return created


def _referenced_first(dsn: str, toc_lines: list[str]) -> list[str]:
    """Order data entries so a table comes after the tables its foreign keys
    reference (sessions after users): a data-only load checks them row by row."""
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text "
                "FROM pg_constraint c WHERE c.contype = 'f'"
            )
            references = [(str(a), str(b)) for a, b in cur.fetchall()]
    finally:
        conn.close()
    depth: dict[str, int] = {}

    def depth_of(table: str, seen: frozenset[str] = frozenset()) -> int:
        if table not in depth:
            parents = [b for a, b in references if a == table and b not in seen]
            depth[table] = 1 + max(
                (depth_of(b, seen | {table}) for b in parents), default=0
            )
        return depth[table]

    def key(line: str) -> int:
        match = _TOC_DATA.match(line)
        if match is None or match[1] != "TABLE DATA":
            return 0
        return depth_of(f"{match[2]}.{match[3]}")

    return sorted(toc_lines, key=key)


def restore(settings: Settings, path: Path, say: Say) -> Summary:
    """Load an archive into the (empty) deployment the settings describe.

    The target is migrated first, then each schema's rows are loaded into whichever
    database the target's shard map names (it may differ from the source's).

    Raises:
        BackupError: not a backup, another shard count or schema version, a
            target that already holds data, or pg_restore failed.
    """
    from messenger.storage.migrate import migrate
    from messenger.storage.router import Router

    started = time.monotonic()
    path = path.absolute()
    manifest = read_manifest(path)
    shard_map = shard_map_of(settings)
    if manifest["shards"] != shard_map.shards:
        raise BackupError(
            f"The backup has {manifest['shards']} shards but MESSENGER_SHARDS is "
            f"{shard_map.shards}: restore into a deployment with the same count."
        )
    plans = plan_databases(shard_map)
    held = rows_held(plans)
    if held:
        raise BackupError(
            f"The target deployment already holds data ({held[0]} has rows): "
            "restore only into an empty deployment."
        )
    pg_restore = find_pg_tool("pg_restore")
    say(f"restore: migrating the target ({len(plans)} database(s))")
    router = Router.from_settings(settings)
    try:
        migrate(router)
    finally:
        router.close()
    applied = _applied_migrations(plans)
    if applied != manifest["migrations"]:
        raise BackupError(
            "The backup was made at other schema migrations than this version "
            f"applies ({manifest['migrations']} vs {applied}): restore with the "
            "version that made it."
        )
    target_of = {schema: plan.dsn for plan in plans for schema in plan.schemas}
    work = Path(tempfile.mkdtemp(prefix=".restore-", dir=path.parent))
    try:
        with tarfile.open(path) as tar:
            for index, database in enumerate(manifest["databases"], 1):
                load_started = time.monotonic()
                dump = work / Path(database["file"]).name
                member = tar.extractfile(database["file"])
                if member is None:
                    raise BackupError(f"{path} lacks {database['file']}.")
                with dump.open("wb") as out:
                    shutil.copyfileobj(member, out)
                toc = _run([pg_restore, "--list", str(dump)], "pg_restore --list")
                for dsn in dict.fromkeys(target_of[s] for s in database["schemas"]):
                    keep = [
                        line
                        for line in toc.splitlines()
                        if (m := _TOC_DATA.match(line))
                        and target_of.get(m[2]) == dsn
                        and m[3] not in DEPLOYMENT_TABLES
                    ]
                    keep = _referenced_first(dsn, keep)
                    listing = work / "restore.list"
                    listing.write_text("\n".join(keep) + "\n")
                    _run(
                        [
                            pg_restore,
                            "--data-only",
                            "--single-transaction",
                            "--exit-on-error",
                            "--no-owner",
                            f"--use-list={listing}",
                            str(dump),
                        ],
                        f"pg_restore into {describe_dsn(dsn)}",
                        dsn,
                    )
                dump.unlink()
                rows = sum(database["rows"].values())
                say(
                    f"restore: database {index}/{len(manifest['databases'])} "
                    f"(from {database['source']}): {rows:,} rows, "
                    f"{_size(database['bytes'])} in "
                    f"{time.monotonic() - load_started:.1f} s"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    created = _ensure_user_states(shard_map, say)
    expected = _table_totals(manifest["databases"])
    expected["user_state"] = expected.get("user_state", 0) + created
    loaded = _table_totals(_count_rows(plans))
    if loaded != expected:
        differ = sorted(k for k in expected.keys() | loaded.keys()
                        if expected.get(k) != loaded.get(k))  # fmt: skip
        raise BackupError(
            f"The restored row counts differ from the backup's in {', '.join(differ)}."
        )
    say(
        "restore: done; outbox rows in the backup are fanned out by the sweeper once "
        "the service runs (or `messenger sweep`)"
    )
    summary = Summary(path, path.stat().st_size, loaded, time.monotonic() - started)
    _say_summary("restore", summary, say)
    return summary
