"""The `messenger` command: run (embedded default), migrate, sweep, trim-events,
push-worker, backup, restore, doctor."""

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


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    end = "\n" if done == total else ""
    sys.stdout.write(
        f"\rmigrate [{'#' * filled}{'.' * (width - filled)}] "
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
    _say(
        f"migrations: {result.applied} applied across {result.schemas} schemas "
        "(directory + shards); up to date"
    )
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

    touched = sweeper.trim_once(_runtime(settings), days)
    _say(f"trim-events: trimmed the streams of {touched} users")
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

    return LocalServers(
        settings.data_dir.resolve(),
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
            if not (settings.database_url or settings.shard_map):
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
        "doctor",
        help="check settings, databases, Redis, migrations, clocks and limits",
    )
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from messenger import doctor

        return doctor.main()
    try:
        settings = load()
        if args.command == "run":
            return cmd_run(settings, args.workers, not args.no_push_worker)
        if args.command in ("backup", "restore"):
            if not (settings.database_url or settings.shard_map):
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
        if args.command == "sweep":
            return cmd_sweep(settings)
        if args.command == "trim-events":
            return cmd_trim(settings, args.days)
        if args.command == "push-worker":
            return cmd_push_worker(settings)
    except ConfigError as exc:
        print(f"messenger: configuration error: {exc}", file=sys.stderr)
        return 2
    return 1
