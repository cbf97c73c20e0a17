"""The `messenger` command: run (embedded default), migrate, sweep, trim-events,
push-worker, backup, restore, doctor, gc-attachments, and the shard tier's
shards, move-shard, drop-moved-shard, add-database, rebalance."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from messenger.settings import ConfigError, Settings, load

ROOT = Path(__file__).resolve().parent.parent


def _say(text: str) -> None:
    print(f"messenger: {text}", flush=True)


def _progress(done: int, total: int, label: str, title: str = "migrate") -> None:
    width = 30
    filled = int(width * done / total) if total else width
    end = "\n" if done == total else ""
    sys.stdout.write(
        f"\r{title} [{'#' * filled}{'.' * (width - filled)}] "
        f"{done}/{total} {label:<12}{end}"
    )
    sys.stdout.flush()


def _router(settings: Settings):  # type: ignore[no-untyped-def]
    from messenger.storage.router import Router

    return Router.from_settings(settings)


def cmd_migrate(settings: Settings) -> int:
    from messenger.storage.migrate import MigrateRefused, migrate

    router = _router(settings)
    try:
        result = migrate(router, progress=_progress if sys.stdout.isatty() else None)
    except MigrateRefused as exc:
        print(f"messenger: migrate refused: {exc}", file=sys.stderr)
        return 1
    finally:
        router.close()
    if result.copied_rows:
        _say(f"migrate: copied {result.copied_rows} rows from the directory to shards")
    _say(
        f"migrations: {result.applied} applied across {result.schemas} schemas "
        "(directory + shards); up to date"
    )
    return 0


def _mb(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB"


def cmd_shards(settings: Settings) -> int:
    """Print the map, each shard's size and rows, each database's load."""
    from messenger.storage import placement

    router = _router(settings)
    try:
        report = placement.report(router)
    finally:
        router.close()
    print(f"shard map: {report.shards} shards, epoch {report.epoch}")
    if report.moving:
        print(f"moving: {report.moving}")
    print(f"{'database':<16} {'shards':>6} {'connections':>11} {'size':>10}")
    for db in report.databases:
        if not db.reachable:
            print(f"{db.name:<16} {db.shards:>6} (no URL in MESSENGER_DATABASES)")
            continue
        print(
            f"{db.name:<16} {db.shards:>6} {db.connections:>11} "
            f"{_mb(db.size_bytes):>10}"
        )
    print(f"{'shard':>5} {'database':<16} {'state':<7} {'size':>10} rows")
    for info in report.shard_infos:
        rows = " ".join(f"{t}={n}" for t, n in sorted(info.rows.items()) if n)
        print(
            f"{info.shard:>5} {info.database:<16} {info.state:<7} "
            f"{_mb(info.size_bytes):>10} {rows or '-'}"
        )
    return 0


def cmd_move_shard(
    settings: Settings, shard: int, target: str | None, abort: bool
) -> int:
    """Move a logical shard online, resume a crashed move, or roll one back."""
    from messenger.storage import moves

    router = _router(settings)
    try:
        if abort:
            if not moves.abort_move(router, shard, say=_say):
                _say(f"move-shard: no move of shard {shard} is under way")
            return 0
        if target is None:
            print("messenger: move-shard needs --to NAME (or --abort)", file=sys.stderr)
            return 2
        result = moves.move_shard(router, shard, target, say=_say)
    except moves.MoveError as exc:
        print(f"messenger: move-shard: {exc}", file=sys.stderr)
        return 1
    finally:
        router.close()
    timing = f"fence {result.fence_secs:.2f} s, then verify {result.verify_secs:.2f} s"
    if result.copy_secs:
        timing = (
            f"copy {result.rows / result.copy_secs:.0f} rows/s, "
            f"{result.copy_bytes / 1e6 / result.copy_secs:.2f} MB/s; {timing}"
        )
    _say(f"move-shard {shard}: {timing}")
    _say("run `messenger drop-moved-shard` once you no longer need the old copy")
    return 0


def cmd_drop_moved_shard(settings: Settings, shard: int | None) -> int:
    from messenger.storage import moves

    router = _router(settings)
    try:
        dropped = moves.drop_moved_shards(router, shard, say=_say)
    except moves.MoveError as exc:
        print(f"messenger: drop-moved-shard: {exc}", file=sys.stderr)
        return 1
    finally:
        router.close()
    if not dropped:
        _say("drop-moved-shard: no old copies left")
    return 0


def cmd_add_database(settings: Settings, spec: str) -> int:
    """Record a database shards may move to (its URL must be in
    MESSENGER_DATABASES on every process)."""
    from messenger.settings import parse_databases
    from messenger.storage import shardmap
    from messenger.storage.pools import describe_dsn

    ((name, dsn),) = parse_databases(spec) or (("", ""),)
    if not name:
        raise ConfigError("add-database takes NAME=postgresql://...")
    known = settings.resolved_databases()
    if known.get(name, dsn) != dsn:
        raise ConfigError(
            f"MESSENGER_DATABASES names {name} with another URL than the one given."
        )
    router = _router(settings)
    try:
        router.databases.setdefault(name, dsn)
        with router.on_dsn(dsn, "add_database", transaction=False) as cur:
            cur.execute("SELECT current_setting('wal_level')")
            wal_level = cur.fetchone()[0]
        with router.directory("add_database") as cur:
            added = shardmap.add_database(cur, name)
    finally:
        router.close()
    _say(
        f"add-database: {name} ({describe_dsn(dsn)}) "
        + ("added" if added else "was already known")
        + f"; wal_level = {wal_level}"
    )
    if name not in known:
        _say(
            f"add {name}={describe_dsn(dsn)} to MESSENGER_DATABASES on every "
            "process before moving a shard there"
        )
    return 0


def cmd_rebalance(settings: Settings, apply: bool) -> int:
    """Print (or run, one move at a time) the moves that spread shards evenly."""
    from messenger.storage import moves, placement

    router = _router(settings)
    try:
        plan = placement.plan_rebalance(placement.stored_map(router), router.databases)
        if not plan:
            _say("rebalance: the shards are spread evenly; nothing to move")
            return 0
        for index, (shard, source, target) in enumerate(plan, 1):
            _say(
                f"rebalance: {index}/{len(plan)} move shard {shard} {source} → {target}"
            )
        if not apply:
            return 0
        for index, (shard, _source, target) in enumerate(plan, 1):
            _say(f"rebalance: move {index}/{len(plan)}")
            moves.move_shard(router, shard, target, say=_say)
    except moves.MoveError as exc:
        print(f"messenger: rebalance: {exc}", file=sys.stderr)
        return 1
    finally:
        router.close()
    _say(f"rebalance: done, {len(plan)} shard(s) moved")
    return 0


def _runtime(settings: Settings):  # type: ignore[no-untyped-def]
    """The runtime with the same hooks as the server's (a replayed fan-out
    queues its pushes); no background work."""
    from messenger import bootstrap

    return bootstrap.build(settings)


def cmd_sweep(settings: Settings) -> int:
    from messenger.workers import sweeper

    done = sweeper.sweep_once(_runtime(settings), older_than_secs=0)
    _say(f"sweep: finished {done} outbox rows")
    return 0


def cmd_trim(settings: Settings, days: int | None) -> int:
    from messenger.workers import sweeper

    touched = sweeper.trim_once(_runtime(settings), days, progress=_say)
    _say(f"trim-events: trimmed the streams of {touched} users")
    return 0


def cmd_push_dlq(settings: Settings, action: str, limit: int) -> int:
    """List or replay dead-lettered push jobs (workers/push_queue.py)."""
    import redis

    from messenger.realtime import keys
    from messenger.workers import push_queue

    client = redis.Redis.from_url(settings.redis_url or "", socket_timeout=10)
    try:
        waiting = int(client.llen(keys.PUSH_DEAD))  # type: ignore[arg-type]
        if action == "list":
            _say(f"push-dlq: {waiting} dead-lettered jobs (newest first)")
            for raw, job in push_queue.dead_letters(client, limit):
                if job is None:
                    print(f"  (not a job) {raw[:120]!r}")
                    continue
                device = "every device" if job.device_id is None else job.device_id
                print(
                    f"  job {job.job_id}: user {job.user_id}, conversation "
                    f"{job.conversation_id}, {len(job.messages)} messages, "
                    f"device {device}, attempts {job.attempt}: {job.error or '-'}"
                )
            return 0
        _say(f"push-dlq: replaying up to {min(limit, waiting)} of {waiting} jobs")
        moved = push_queue.replay_dead(
            client,
            limit,
            lambda done, total: _progress(done, total, "jobs", "push-dlq replay"),
        )
        _say(f"push-dlq: {moved} jobs queued again")
        return 0
    finally:
        client.close()


def cmd_gc_attachments(settings: Settings) -> int:
    """Remove uploads no message carries, past attachment_unsent_hours, showing
    progress shard by shard (every worker also does it hourly)."""
    from messenger.services import attachments

    is_tty = sys.stdout.isatty()

    def progress(done: int, total: int) -> None:
        if is_tty:
            width = 30
            filled = int(width * done / total) if total else width
            end = "\n" if done == total else ""
            sys.stdout.write(
                f"\rgc-attachments [{'#' * filled}{'.' * (width - filled)}] "
                f"{done}/{total} shards{end}"
            )
        else:
            sys.stdout.write(f"gc-attachments: {done}/{total} shards\n")
        sys.stdout.flush()

    removed = attachments.collect(_runtime(settings), progress)
    _say(f"gc-attachments: removed {removed} uploads never sent")
    return 0


def cmd_push_worker(settings: Settings) -> int:
    """Deliver push jobs until SIGTERM (workers/pusher.py)."""
    # The worker serves many slow webhooks at once from greenlets: patch first.
    from gevent import monkey

    monkey.patch_all()
    from messenger.workers import pusher

    return pusher.main(settings)


def cmd_backup(settings: Settings, path: Path) -> int:
    """Write every database to one archive (storage/backup.py)."""
    from messenger.storage import backup

    try:
        backup.backup(settings, path, _say)
    except backup.BackupError as exc:
        print(f"messenger: backup failed: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_restore(settings: Settings, path: Path) -> int:
    """Load an archive into an empty deployment (storage/backup.py)."""
    from messenger.storage import backup

    try:
        backup.restore(settings, path, _say)
    except backup.BackupError as exc:
        print(f"messenger: restore refused: {exc}", file=sys.stderr)
        return 1
    return 0


def _start_push_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "messenger", "push-worker"]
    return subprocess.Popen(argv, cwd=ROOT, env=env, preexec_fn=_child_hook())


def gunicorn_argv() -> list[str]:
    """The production server command (run with cwd=ROOT and MESSENGER_* set);
    `messenger run`, the system tests and the benchmark all start this."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "wsgi:app",
    ]


def _stop_child(proc: subprocess.Popen[bytes] | None, timeout_secs: float) -> None:
    """SIGTERM a child, SIGKILL it if it has not exited within the timeout."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_secs)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _local_servers(settings: Settings):  # type: ignore[no-untyped-def]
    from messenger.embedded import LocalServers
    from messenger.embedded.accounts import postgres_account

    data_dir = settings.data_dir.resolve()
    # Private: it holds every message and the servers' passwords. As root,
    # PostgreSQL runs as the postgres user, who must be able to pass through
    # (not list) it to reach its cluster.
    mode = 0o711 if postgres_account() is not None else 0o700
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(mode)
    return LocalServers(
        data_dir,
        pg_port=settings.embedded_pg_port,
        redis_port=settings.embedded_redis_port,
        log=_say,
    )


def _child_hook():  # type: ignore[no-untyped-def]
    from messenger.embedded import child_hook

    return child_hook()


def _stop_with_parent() -> None:
    """Get SIGTERM when the parent (make) dies, so `kill <make>` stops us too."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def cmd_run(settings: Settings, workers: int | None, push_worker: bool = True) -> int:
    """Serve the API; with no database/Redis configured, start local ones first.

    The embedded PostgreSQL and Redis and the push worker are supervised
    (messenger/supervisor.py): restarted when they die, until they fail too often.
    """
    from messenger import supervisor

    env = dict(os.environ)
    started = []

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    # Also when started in the background by a shell, which ignores SIGINT for it:
    # SIGINT to the process group means stop, for us as for gunicorn.
    signal.signal(signal.SIGINT, _stop)
    _stop_with_parent()
    gunicorn = None
    pusher = None
    servers = None
    try:
        if settings.is_embedded:
            servers = _local_servers(settings)
            if not (settings.database_url or settings.shard_map or settings.databases):
                servers.pg.start()
                started.append(servers.pg)
                env["MESSENGER_DATABASE_URL"] = servers.pg.dsn("messenger")
                _say(
                    f"PostgreSQL: {servers.pg.binaries_source}, "
                    f"data in {servers.pg.data_dir}"
                )
            if not settings.redis_url:
                servers.redis.start()
                started.append(servers.redis)
                env["MESSENGER_REDIS_URL"] = servers.redis.url
                _say(f"Redis: {servers.redis.binaries_source}")
            settings = load(env)
        if cmd_migrate(settings) != 0:
            return 1
        if servers is not None:
            # What `messenger doctor` and `messenger backup` need to reach them.
            _say(
                "for doctor/backup: MESSENGER_DATABASE_URL="
                f"{settings.resolved_directory_url()} MESSENGER_REDIS_URL="
                f"{settings.redis_url} MESSENGER_SHARDS={settings.shards}"
            )
        if workers:
            env["MESSENGER_WORKERS"] = str(workers)
        env.setdefault("MESSENGER_LOG_JSON", "0")
        _say(f"serving on http://{settings.host}:{settings.port} (Ctrl-C stops)")
        children = []
        if servers is not None and servers.pg in started:
            children.append(supervisor.postgres_child(servers.pg))
        if servers is not None and servers.redis in started:
            children.append(supervisor.redis_child(servers.redis))
        if push_worker:
            pusher = supervisor.ChildProcess(lambda: _start_push_worker(env))
            children.append(supervisor.process_child("push worker", pusher))
        # If this process is killed outright (kill -9), the children get SIGTERM
        # and stop gracefully instead of holding the port for the next start.
        gunicorn = subprocess.Popen(
            gunicorn_argv(), cwd=ROOT, env=env, preexec_fn=_child_hook()
        )
        return supervisor.Supervisor(children, say=_say).watch(gunicorn)
    except supervisor.SupervisionFailed as exc:
        print(f"messenger: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if gunicorn is not None and gunicorn.poll() is None:
            _say("stopping the server (answering held polls)")
            _stop_child(gunicorn, 40)
        if pusher is not None:
            pusher.stop(30)
        for service in reversed(started):
            service.stop()
        if started:
            _say("stopped the embedded PostgreSQL and Redis")


def cmd_cluster(
    action: str, root: Path, port: int, detach: bool, assignments: list[str]
) -> int:
    """`make cluster` / `make cluster-down` (messenger/embedded/topology.py)."""
    from messenger.embedded import topology

    def say(text: str) -> None:
        print(f"cluster: {text}", flush=True)

    if action == "down":
        return topology.down(root, say)
    extra_env = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name.startswith("MESSENGER_"):
            print(f"messenger: --set takes MESSENGER_X=VALUE, not {assignment!r}")
            return 2
        extra_env[name] = value
    if detach:
        return topology.up_detached(root, port, say, extra_env)
    return topology.up(root, port, say, gunicorn_argv(), extra_env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="messenger", description="A long-polling HTTP messenger."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="serve (starts local PostgreSQL and Redis when no URLs are configured)",
    )
    run.add_argument("--workers", type=int, help="gunicorn workers")
    run.add_argument(
        "--no-push-worker",
        action="store_true",
        help="don't start a push worker beside the server (run it separately)",
    )
    sub.add_parser("migrate", help="apply sql/ to the directory and every shard")
    sub.add_parser("sweep", help="finish outbox rows a crash left undone (one pass)")
    trim = sub.add_parser("trim-events", help="delete events past retention")
    trim.add_argument("--days", type=int, help="override the retention window")
    sub.add_parser(
        "gc-attachments",
        help="remove uploads no message carries after MESSENGER_ATTACHMENT_"
        "UNSENT_HOURS (workers also do it hourly)",
    )
    sub.add_parser(
        "push-worker",
        help="deliver push notifications to offline users' devices (until SIGTERM)",
    )
    backup = sub.add_parser(
        "backup",
        help="write a consistent snapshot of the directory and every shard to FILE",
    )
    backup.add_argument("file", type=Path)
    restore = sub.add_parser(
        "restore", help="load a backup FILE into an empty deployment"
    )
    restore.add_argument("file", type=Path)
    sub.add_parser(
        "shards", help="the shard map, each shard's size and rows, each database's load"
    )
    move = sub.add_parser(
        "move-shard",
        help="move a logical shard to another database online (resumes a crashed move)",
    )
    move.add_argument("shard", type=int)
    move.add_argument("--to", dest="target", help="the database name")
    move.add_argument(
        "--abort", action="store_true", help="roll back a move that has not switched"
    )
    drop = sub.add_parser(
        "drop-moved-shard", help="drop the old copies of moved shards"
    )
    drop.add_argument("shard", type=int, nargs="?")
    add_db = sub.add_parser(
        "add-database", help="record a database (NAME=URL) shards may move to"
    )
    add_db.add_argument("spec", metavar="NAME=URL")
    rebalance = sub.add_parser(
        "rebalance", help="spread the shards evenly over the databases"
    )
    mode = rebalance.add_mutually_exclusive_group(required=True)
    mode.add_argument("--plan", action="store_true", help="print the moves")
    mode.add_argument("--apply", action="store_true", help="make them, one at a time")
    sub.add_parser(
        "doctor",
        help="check settings, databases, Redis, migrations, clocks and limits",
    )
    cluster = sub.add_parser(
        "cluster",
        help="several machines on loopback: 3 PostgreSQL, a Redis Cluster, "
        "2 hosts, push worker, nginx",
    )
    cluster.add_argument("action", choices=("up", "down"))
    cluster.add_argument(
        "--root", type=Path, default=ROOT / "var" / "cluster", help="its folder"
    )
    cluster.add_argument("--port", type=int, default=8088, help="nginx's port")
    cluster.add_argument(
        "--detach", action="store_true", help="up: return once it serves"
    )
    cluster.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="MESSENGER_X=VALUE",
        help="up: a setting for every host (repeatable)",
    )
    dlq = sub.add_parser(
        "push-dlq", help="list or replay push jobs that failed their last attempt"
    )
    dlq.add_argument("action", choices=("list", "replay"))
    dlq.add_argument(
        "--limit", type=int, default=100, help="at most this many jobs (default 100)"
    )
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from messenger import doctor

        return doctor.main()
    if args.command == "cluster":
        return cmd_cluster(args.action, args.root, args.port, args.detach, args.set)
    try:
        settings = load()
        if args.command == "run":
            return cmd_run(settings, args.workers, not args.no_push_worker)
        if args.command in ("backup", "restore"):
            if not (settings.database_url or settings.shard_map or settings.databases):
                raise ConfigError(
                    "MESSENGER_DATABASE_URL or MESSENGER_SHARD_MAP must be set (for "
                    "`messenger run`'s database: the URL it prints)."
                )
            if args.command == "backup":
                return cmd_backup(settings, args.file)
            return cmd_restore(settings, args.file)
        if settings.is_embedded:
            raise ConfigError(
                "MESSENGER_DATABASE_URL and MESSENGER_REDIS_URL must "
                "be set (only `messenger run` starts local ones)."
            )
        if args.command == "migrate":
            return cmd_migrate(settings)
        if args.command == "shards":
            return cmd_shards(settings)
        if args.command == "move-shard":
            return cmd_move_shard(settings, args.shard, args.target, args.abort)
        if args.command == "drop-moved-shard":
            return cmd_drop_moved_shard(settings, args.shard)
        if args.command == "add-database":
            return cmd_add_database(settings, args.spec)
        if args.command == "rebalance":
            return cmd_rebalance(settings, args.apply)
        if args.command == "sweep":
            return cmd_sweep(settings)
        if args.command == "trim-events":
            return cmd_trim(settings, args.days)
        if args.command == "gc-attachments":
            return cmd_gc_attachments(settings)
        if args.command == "push-worker":
            return cmd_push_worker(settings)
        if args.command == "push-dlq":
            return cmd_push_dlq(settings, args.action, max(1, args.limit))
    except ConfigError as exc:
        print(f"messenger: configuration error: {exc}", file=sys.stderr)
        return 2
    return 1
