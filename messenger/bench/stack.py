"""The stack under test: embedded PostgreSQL and Redis, migrations, gunicorn.

Everything lives under one fresh data folder and on free ports, so a bench never
touches a developer's var/ or a running `make run`. stop() is safe to call at any
point, more than once, and waits a bounded time for each process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

from messenger.bench import procs
from messenger.bench.client import Api, ApiFailure, TransportError
from messenger.cli import gunicorn_argv

REPO_ROOT = Path(__file__).resolve().parents[2]
# PostgreSQL refuses a data folder under /root or below a 0700 parent, so the stack
# lives under /var/tmp, like any other scratch data.
SCRATCH_ROOT = Path("/var/tmp")
SERVER_START_TIMEOUT_SECS = 60
MIGRATE_TIMEOUT_SECS = 600
# gunicorn's graceful_timeout plus room: held polls are answered as workers drain.
SERVER_STOP_TIMEOUT_SECS = 40
LOG_TAIL_LINES = 40


class StackError(Exception):
    """A process of the stack failed to start or died."""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Stack:
    """PostgreSQL, Redis and gunicorn for one bench run.

    Args:
        say: prints a progress line.
        shards: MESSENGER_SHARDS for the server (the production default is 64).
        keep_data: leave the data folder behind (for reading the server log).
    """

    def __init__(
        self,
        say: Callable[[str], None],
        shards: int = 64,
        keep_data: bool = False,
        redis_persistent: bool = False,
    ) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.root = SCRATCH_ROOT / f"messenger-bench-{stamp}-{os.getpid()}"
        self.say = say
        self.shards = shards
        self.keep_data = keep_data
        self.redis_persistent = redis_persistent
        self.server_log = self.root / "gunicorn.log"
        self.port = 0
        self.workers = 0
        self.env: dict[str, str] = {}
        self._servers: Any = None
        self._server: subprocess.Popen[bytes] | None = None

    # -- whole stack -------------------------------------------------------------

    def start(self, workers: int) -> None:
        """Start PostgreSQL and Redis, migrate, start gunicorn with workers workers.

        Raises:
            StackError: a process failed to start (its log tail is in the message).
        """
        from messenger.embedded import LocalServers, free_port

        self.root.mkdir(parents=True)
        self.root.chmod(0o755)
        self.say(f"[stack] data folder {self.root}")
        t0 = time.monotonic()
        # The bench measures the server, not Redis's disk: nothing to persist
        # (the fault run asks for the append-only file `make run` keeps).
        self._servers = LocalServers(
            self.root,
            pg_port=free_port(),
            redis_port=free_port(),
            persistent=self.redis_persistent,
            log=lambda m: self.say(f"[stack] {m}"),
        )
        self._servers.start()
        self.say(f"[stack] PostgreSQL and Redis ready ({time.monotonic() - t0:.1f} s)")
        self.port = free_port()
        inherited = {
            k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")
        }
        self.env = {
            **inherited,
            "MESSENGER_DATABASE_URL": self._servers.pg.dsn("messenger"),
            "MESSENGER_REDIS_URL": self._servers.redis.url,
            "MESSENGER_SHARDS": str(self.shards),
            "MESSENGER_SECRET_KEY": secrets.token_hex(24),
            "MESSENGER_HOST": "127.0.0.1",
            "MESSENGER_PORT": str(self.port),
            "MESSENGER_RATE_LIMITS": "off",
            "MESSENGER_PUSH_ALLOW_PRIVATE": "1",
            "MESSENGER_DATA_DIR": str(self.root / "server"),
        }
        self.migrate()
        self.start_server(workers)

    def stop(self) -> None:
        """Stop whatever was started, in reverse order; never raises."""
        for name, step in (
            ("gunicorn", self.stop_server),
            ("PostgreSQL and Redis", lambda: self._servers and self._servers.stop()),
        ):
            try:
                step()
            except Exception as exc:  # keep stopping the rest
                self.say(f"[stack] stopping {name} failed: {exc!r}")
        self._servers = None
        if self.root.exists() and not self.keep_data:
            shutil.rmtree(self.root, ignore_errors=True)
        elif self.root.exists():
            self.say(f"[stack] kept {self.root}")

    # -- steps ---------------------------------------------------------------------

    def migrate(self) -> None:
        t0 = time.monotonic()
        self.say(f"[stack] migrating {self.shards} shards")
        with open(self.root / "migrate.log", "wb") as log:
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "messenger", "migrate"],
                    cwd=REPO_ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=MIGRATE_TIMEOUT_SECS,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise StackError(
                    f"messenger migrate did not finish in {MIGRATE_TIMEOUT_SECS} s."
                ) from None
        if done.returncode != 0:
            raise StackError(
                f"messenger migrate exited {done.returncode}:\n"
                + log_tail(self.root / "migrate.log")
            )
        self.say(f"[stack] migrated ({time.monotonic() - t0:.1f} s)")

    def start_server(self, workers: int) -> None:
        """Start gunicorn (production gunicorn.conf.py) and wait until it serves."""
        self.workers = workers
        env = {**self.env, "MESSENGER_WORKERS": str(workers)}
        t0 = time.monotonic()
        with open(self.server_log, "ab") as log:
            # Its own session: signals typed at the terminal reach only the bench,
            # which stops gunicorn itself, and killpg can reap every worker.
            self._server = subprocess.Popen(
                gunicorn_argv(),
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        api = Api(self.port, pool_size=1)
        try:
            deadline = t0 + SERVER_START_TIMEOUT_SECS
            while True:
                if self._server.poll() is not None:
                    raise StackError(
                        f"gunicorn exited {self._server.returncode} while starting:\n"
                        + log_tail(self.server_log)
                    )
                if time.monotonic() > deadline:
                    raise StackError(
                        f"gunicorn did not serve /readyz with {workers} workers "
                        f"within {SERVER_START_TIMEOUT_SECS} s:\n"
                        + log_tail(self.server_log)
                    )
                try:
                    api.call("GET", "/readyz", timeout_secs=5)
                    if len(self.worker_pids()) >= workers:
                        break
                except (ApiFailure, TransportError):
                    pass
                gevent.sleep(0.2)
        finally:
            api.close()
        self.say(
            f"[stack] gunicorn on port {self.port}, {workers} worker(s) "
            f"({time.monotonic() - t0:.1f} s)"
        )

    def stop_server(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + SERVER_STOP_TIMEOUT_SECS
            while server.poll() is None and time.monotonic() < deadline:
                gevent.sleep(0.1)
            if server.poll() is None:
                self.say("[stack] gunicorn did not stop in time; killing it")
        # Whatever is left of its session (a stuck worker) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.say(f"[stack] gunicorn {server.pid} did not exit after SIGKILL")

    def restart_server(self, workers: int) -> None:
        """Restart gunicorn when it runs with another number of workers."""
        if self._server is not None and self.workers == workers and self.is_alive():
            return
        self.stop_server()
        self.start_server(workers)

    # -- processes -------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        return self.env["MESSENGER_DATABASE_URL"]

    def is_alive(self) -> bool:
        return self._server is not None and self._server.poll() is None

    def check_alive(self) -> None:
        """Raises StackError when gunicorn has died."""
        if not self.is_alive():
            raise StackError("gunicorn is not running:\n" + log_tail(self.server_log))

    def master_pid(self) -> int | None:
        return self._server.pid if self._server is not None else None

    def worker_pids(self) -> list[int]:
        """gunicorn's workers among the master's children.

        Forked workers keep the master's command line, unless setproctitle renamed
        them "gunicorn: worker [...]"; any other child (a helper process) is left out.
        """
        master = self.master_pid()
        if master is None:
            return []
        command = procs.cmdline(master)
        workers = []
        for pid in procs.child_pids(master):
            argv = procs.cmdline(pid)
            if argv == command or (argv and "gunicorn: worker" in argv[0]):
                workers.append(pid)
        return workers

    def postgres_pids(self) -> list[int]:
        pid = self._servers.pg.pid if self._servers is not None else None
        return procs.process_tree(pid) if pid else []

    def redis_pids(self) -> list[int]:
        pid = self._servers.redis.pid if self._servers is not None else None
        return [pid] if pid else []

    def process_groups(self) -> dict[str, list[int]]:
        """Named groups for CpuMeter: server (gunicorn tree), its workers alone,
        postgres, redis."""
        master = self.master_pid()
        return {
            "server": procs.process_tree(master) if master else [],
            "workers": self.worker_pids(),
            "postgres": self.postgres_pids(),
            "redis": self.redis_pids(),
        }
