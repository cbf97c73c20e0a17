"""`messenger doctor`: is this host ready to serve? One line per check.

Checks the settings, every database (the directory's and each shard's physical
database): connection, migrations, clock skew, connection headroom; Redis
(connection, version); and the open-file limit against the connections gunicorn is
configured to hold. Each line reads `OK|WARN|FAIL  check: what was found`, and a
failing check says what to do. The exit code is 1 when any check FAILs.

With no database or Redis configured, the checks target the servers `messenger
run` starts (the embedded ports of the settings).
"""

from __future__ import annotations

import ast
import multiprocessing
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import redis

from messenger.settings import ConfigError, Settings, load
from messenger.storage.migrate import load_migrations
from messenger.storage.pools import describe_dsn
from messenger.storage.router import Router
from messenger.storage.shards import DIRECTORY_SCHEMA, ShardMap, schema_name

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
# NTP keeps hosts within milliseconds; a second means the sync is off, and past a
# few seconds event times, presence and retention visibly disagree.
CLOCK_SKEW_WARN_SECS = 1.0
CLOCK_SKEW_FAIL_SECS = 5.0
# The wake dispatcher needs BLMPOP (Redis 7.0).
MIN_REDIS_MAJOR = 7
# Files a worker holds besides client sockets and pools: logs, metrics files,
# the listening socket, libraries.
NOFILE_MARGIN = 64
# gunicorn.conf.py's value when it cannot be read.
DEFAULT_WORKER_CONNECTIONS = 1000

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    """One check's verdict; `fix` says what to do when it is not OK."""

    status: str
    name: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.status:<4}  {self.name}: {self.detail}{fix}"


def embedded_targets(settings: Settings) -> Settings:
    """The settings with `messenger run`'s embedded servers filled in where no
    database or Redis is configured."""
    from dataclasses import replace

    from messenger.embedded import EmbeddedPostgres, EmbeddedRedis

    changes: dict[str, object] = {}
    if not (settings.database_url or settings.shard_map or settings.databases):
        pg = EmbeddedPostgres(settings.data_dir / "postgres", settings.embedded_pg_port)
        changes["database_url"] = pg.dsn("messenger")
    if not settings.redis_url:
        rds = EmbeddedRedis(settings.data_dir / "redis", settings.embedded_redis_port)
        changes["redis_url"] = rds.url
    return replace(settings, **changes)  # type: ignore[arg-type]


def worker_connections(conf: Path = GUNICORN_CONF) -> int:
    """worker_connections from gunicorn.conf.py, read without running it."""
    try:
        tree = ast.parse(conf.read_text())
    except (OSError, SyntaxError):
        return DEFAULT_WORKER_CONNECTIONS
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(
                isinstance(t, ast.Name) and t.id == "worker_connections"
                for t in node.targets
            )
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, int)
        ):
            return node.value.value
    return DEFAULT_WORKER_CONNECTIONS


def _schemas_by_dsn(shard_map: ShardMap) -> dict[str, list[str]]:
    by_dsn = {dsn: [schema_name(s) for s in shards]
              for dsn, shards in shard_map.shards_by_dsn().items()}  # fmt: skip
    by_dsn.setdefault(shard_map.directory_dsn, []).insert(0, DIRECTORY_SCHEMA)
    return by_dsn


def _database_checks(
    settings: Settings, dsn: str, schemas: list[str], workers: int, siblings: int
) -> Iterator[Check]:
    """Checks of one database; `siblings` databases (it included) share its
    server, and so its max_connections."""
    where = describe_dsn(dsn)
    try:
        conn = psycopg2.connect(dsn, connect_timeout=settings.db_connect_timeout_secs)
    except psycopg2.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
        yield Check(
            FAIL,
            f"database {where}",
            f"cannot connect ({reason})",
            "start PostgreSQL there, or correct MESSENGER_DATABASE_URL / "
            "MESSENGER_SHARD_MAP / MESSENGER_DIRECTORY_URL",
        )
        return
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            before = time.time()
            cur.execute("SELECT now(), current_setting('server_version')")
            after = time.time()
            db_now, version = cur.fetchone()
            yield Check(OK, f"database {where}", f"PostgreSQL {version}")
            yield _clock_check(where, db_now, (before + after) / 2)
            yield _migration_check(cur, where, schemas)
            cur.execute(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
            )
            available = int(cur.fetchone()[0])
    finally:
        conn.close()
    # Each gunicorn worker keeps a pool per database; the push worker one more.
    wanted = (workers + 1) * settings.db_pool_size * siblings
    yield Check(
        OK if wanted <= available else WARN,
        f"connections {where}",
        f"({workers} workers + push worker) x pool {settings.db_pool_size} x "
        f"{siblings} databases on this server = {wanted} of {available} allowed",
        "raise max_connections, or lower MESSENGER_DB_POOL_SIZE or MESSENGER_WORKERS",
    )


def _clock_check(where: str, db_now: datetime, local_epoch: float) -> Check:
    skew = db_now.timestamp() - local_epoch
    status = OK
    if abs(skew) > CLOCK_SKEW_FAIL_SECS:
        status = FAIL
    elif abs(skew) > CLOCK_SKEW_WARN_SECS:
        status = WARN
    return Check(
        status,
        f"clock {where}",
        f"database clock {skew:+.3f} s from this host's "
        f"(warn > {CLOCK_SKEW_WARN_SECS:.0f} s, fail > {CLOCK_SKEW_FAIL_SECS:.0f} s)",
        "synchronise both clocks with NTP (apt-get install chrony, or "
        "systemd-timesyncd)",
    )


def _migration_check(
    cur: psycopg2.extensions.cursor, where: str, schemas: list[str]
) -> Check:
    expected = {
        kind: [m.name for m in load_migrations(kind)] for kind in ("directory", "shard")
    }
    missing: dict[str, list[str]] = {}
    unknown: set[str] = set()
    for schema in schemas:
        kind = "directory" if schema == DIRECTORY_SCHEMA else "shard"
        try:
            cur.execute(f'SELECT name FROM "{schema}".schema_migrations')
            applied = {row[0] for row in cur.fetchall()}
        except psycopg2.errors.UndefinedTable:
            applied = set()
        lacking = [name for name in expected[kind] if name not in applied]
        if lacking:
            missing[schema] = lacking
        unknown |= applied - set(expected[kind])
    if missing:
        first = next(iter(missing))
        return Check(
            FAIL,
            f"schema {where}",
            f"{len(missing)} of {len(schemas)} schemas lack migrations "
            f"({first}: {', '.join(missing[first])})",
            "run `messenger migrate`",
        )
    if unknown:
        return Check(
            WARN,
            f"schema {where}",
            f"applied migrations this code does not know: {', '.join(sorted(unknown))}",
            "this code is older than the database: deploy the newer version",
        )
    kinds = ["directory"] if DIRECTORY_SCHEMA in schemas else []
    kinds += ["shard"] if len(schemas) > len(kinds) else []
    latest = ", ".join(f"{k} at {expected[k][-1]}" for k in kinds if expected[k])
    return Check(OK, f"schema {where}", f"{len(schemas)} schemas up to date ({latest})")


def _redis_check(settings: Settings) -> Check:
    assert settings.redis_url is not None
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=3, socket_connect_timeout=3
    )
    parts = urlsplit(settings.redis_url)  # never print a password
    where = f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
    try:
        info = client.info("server")
    except redis.RedisError as exc:
        return Check(
            FAIL,
            f"redis {where}",
            f"cannot connect ({exc})",
            "start Redis there, or correct MESSENGER_REDIS_URL",
        )
    finally:
        client.close()
    version = str(info.get("redis_version", "0"))
    name = f"Valkey {info['valkey_version']}" if "valkey_version" in info else "Redis"
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_REDIS_MAJOR:
        return Check(
            FAIL,
            f"redis {where}",
            f"Redis {version} is older than {MIN_REDIS_MAJOR} (no BLMPOP)",
            f"upgrade to Redis {MIN_REDIS_MAJOR}+ (or Valkey)",
        )
    return Check(OK, f"redis {where}", f"{name} (redis_version {version})")


def _nofile_check(settings: Settings, workers: int, databases: int) -> Check:
    connections = worker_connections()
    # Per worker process: its client sockets, a pool per database, Redis's pool and
    # the dispatcher's connection.
    needed = (
        connections
        + databases * settings.db_pool_size
        + settings.redis_pool_size
        + 1
        + NOFILE_MARGIN
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # gunicorn.conf.py raises the soft limit to the hard one at start.
    limit = hard if hard != resource.RLIM_INFINITY else needed
    detail = (
        f"each of {workers} workers may hold {connections} connections "
        f"({workers * connections} in all) + pools: needs {needed} files; "
        f"this process's limit is {soft} (hard {hard})"
    )
    return Check(
        OK if limit >= needed else FAIL,
        "open files",
        detail,
        f"raise the limit to {needed}+ (LimitNOFILE= in the systemd unit, or "
        "`ulimit -n` / limits.conf where gunicorn starts)",
    )


def run_checks(settings: Settings) -> list[Check]:
    """Every check against the deployment the settings describe."""
    checks: list[Check] = []
    try:
        # The directory's map (where moves put the shards), else the settings'.
        router = Router.from_settings(settings)
        router.close()
        shard_map = router.shard_map
    except ConfigError as exc:
        return [Check(FAIL, "settings", str(exc), "fix the MESSENGER_* variables")]
    by_dsn = _schemas_by_dsn(shard_map)
    workers = settings.workers or multiprocessing.cpu_count()
    checks.append(
        Check(
            OK,
            "settings",
            f"{settings.shards} shards on {len(by_dsn)} databases, directory on "
            f"{describe_dsn(shard_map.directory_dsn)}, {workers} workers",
        )
    )
    servers = [urlsplit(dsn)[1].rsplit("@", 1)[-1] for dsn in by_dsn]
    for (dsn, schemas), server in zip(by_dsn.items(), servers, strict=True):
        siblings = servers.count(server)
        checks.extend(_database_checks(settings, dsn, schemas, workers, siblings))
    checks.append(_redis_check(settings))
    checks.append(_nofile_check(settings, workers, len(by_dsn)))
    return checks


def main(settings: Settings | None = None, out: Callable[[str], None] = print) -> int:
    """Print one line per check; 1 when any FAILs, else 0."""
    if settings is None:
        try:
            settings = load()
        except ConfigError as exc:
            out(Check(FAIL, "settings", str(exc), "fix that variable").line())
            return 1
    if settings.is_embedded:
        out(
            f"(no database/Redis configured: checking `messenger run`'s embedded "
            f"servers in {settings.data_dir}, at {datetime.now(UTC):%H:%M:%S} UTC)"
        )
        settings = embedded_targets(settings)
    checks = run_checks(settings)
    for check in checks:
        out(check.line())
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    out(f"doctor: {len(checks)} checks, {failed} failed, {warned} warnings")
    return 1 if failed else 0
