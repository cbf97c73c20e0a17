"""An embedded Redis-compatible server (redis-server or Valkey) under a folder.

The server runs as a child process; by default Linux is asked to SIGTERM it when
the thread that started it dies, and a leftover one is replaced on the next start().
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import redis

from messenger.embedded.binaries import find_redis_server
from messenger.embedded.processes import (
    HOST,
    PASSWORD_FILE,
    Server,
    child_hook,
    ensure_port_free,
    folder_lock,
    is_process_running,
    log_tail,
    make_dirs,
    process_argv0,
    process_cwd,
    processes_working_in,
    read_or_create_password,
    say,
    terminate,
)

logger = logging.getLogger(__name__)

# A loaded CI box can take seconds to start a server; past this something is wrong.
START_TIMEOUT_SECS = 30.0
STOP_TIMEOUT_SECS = 30.0
# Redis gets this long after SIGTERM to flush its append-only file before SIGKILL.
REDIS_TERM_GRACE_SECS = 10.0
# Process names a leftover server of ours may have.
SERVER_NAMES = ("redis-server", "valkey-server")


class EmbeddedRedis(Server):
    """A redis-server child process keeping its files under a folder.

    Listens on 127.0.0.1:port only and requires a password (`requirepass`),
    kept in data_dir/password (mode 0600) and carried by `url`. Persistent by
    default (append-only file plus
    the default snapshots), so a second start serves the same data; tests and the
    benchmark pass persistent=False.

    Attributes:
        data_dir: the folder holding the data, the pid file and redis.log.
        port: the TCP port on 127.0.0.1.
        url: redis://:PASSWORD@127.0.0.1:PORT/0 (`display_url` without it).
        binaries_source: which redis-server was used; known after start().
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        log: Callable[[str], None] | None = None,
        *,
        persistent: bool = True,
        kill_with_parent: bool = True,
        start_timeout_secs: float = START_TIMEOUT_SECS,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """Describe a Redis server; nothing runs until start().

        Args:
            data_dir: folder for the data files, the pid file and the log.
            port: TCP port on 127.0.0.1.
            log: called with each progress line (else they go to the logger).
            persistent: keep an append-only file and snapshots across restarts.
            kill_with_parent: on Linux, have the kernel SIGTERM Redis when the thread
                that started it dies (a SIGKILLed caller leaves no Redis behind).
            start_timeout_secs: bound on waiting for PING to answer.
            extra_args: more server options (`--cluster-enabled yes`, ...).
        """
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.binaries_source = ""
        self.persistent = persistent
        self.kill_with_parent = kill_with_parent
        self._log = log
        self._start_timeout_secs = start_timeout_secs
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def password(self) -> str:
        """The password clients need (made on first use, see processes.py)."""
        return read_or_create_password(self.data_dir)

    @property
    def url(self) -> str:
        """The URL clients connect with, password included."""
        return f"redis://:{quote(self.password, safe='')}@{HOST}:{self.port}/0"

    @property
    def display_url(self) -> str:
        """The URL without the password, for logs and terminals."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid_path(self) -> Path:
        """The pid file Redis writes."""
        return self.data_dir / "redis.pid"

    @property
    def log_path(self) -> Path:
        """The server log (Redis's stdout and stderr)."""
        return self.data_dir / "redis.log"

    @property
    def pid(self) -> int | None:
        """The pid of the Redis this object started, while it runs."""
        if self._process is not None and self._process.poll() is None:
            return self._process.pid
        return None

    @property
    def returncode(self) -> int | None:
        """How the process this object started ended (Popen's returncode), or
        None while it runs or when none was started."""
        return None if self._process is None else self._process.poll()

    def start(self) -> None:
        """Start Redis and wait until PING answers. Idempotent.

        A Redis left over from a caller that died (found through the pid file or its
        working folder) is stopped first.

        Raises:
            RuntimeError: no redis-server, port taken by another program, or no PING
                answer in time (the message quotes the log).
        """
        if self.pid is not None:
            return
        deadline = time.monotonic() + self._start_timeout_secs
        binary = find_redis_server()
        self.binaries_source = binary.source
        make_dirs(self.data_dir, 0o700)
        self.data_dir.chmod(0o700)
        with folder_lock(self.data_dir, self._start_timeout_secs):
            self._stop_leftovers()
            ensure_port_free(self.port, "Redis")
            # The password goes in a config file (0600), not on the command
            # line, where any local user could read it in the process list.
            config = self.data_dir / "redis.conf"
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(
                    "# Written by messenger.embedded on every start.\n"
                    f'requirepass "{self.password}"\n'
                )
            args = [
                str(binary.path),
                str(config),
                "--bind", HOST,
                "--port", str(self.port),
                "--dir", str(self.data_dir),
                "--pidfile", str(self.pid_path),
                "--daemonize", "no",
                "--logfile", "",
                "--protected-mode", "yes",
            ]  # fmt: skip
            if self.persistent:
                args += ["--appendonly", "yes"]
            else:
                args += ["--appendonly", "no", "--save", ""]
            args += list(self.extra_args)
            hook = child_hook() if self.kill_with_parent else None
            say(self._log, f"Redis: starting on {HOST}:{self.port} in {self.data_dir}")
            with self.log_path.open("ab") as log_file:
                self._process = subprocess.Popen(
                    args,
                    cwd=self.data_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    # Ctrl-C in a terminal must not reach Redis before the caller has
                    # stopped what uses it: the caller stops it in order.
                    start_new_session=True,
                    preexec_fn=hook,
                )
            try:
                self._wait_ready(deadline)
            except BaseException:
                self._stop_child()
                raise
        say(
            self._log,
            f"Redis: ready at {self.display_url} (password in "
            f"{self.data_dir / PASSWORD_FILE}) ({self.binaries_source})",
        )

    def stop(self) -> None:
        """Stop Redis (SIGTERM, SIGKILL after a bound); leaves no Redis on this folder.

        Never raises when nothing runs.
        """
        had_child = self._process is not None
        self._stop_child()
        if not self.data_dir.exists():
            return
        with folder_lock(self.data_dir, STOP_TIMEOUT_SECS):
            self._stop_leftovers()
        if had_child:
            say(self._log, "Redis: stopped")

    # ----------------------------------------------------------------- helpers

    def _stop_child(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(REDIS_TERM_GRACE_SECS)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "redis pid %s: no exit after SIGTERM, killing", process.pid
                )
                process.kill()
                process.wait(5.0)

    def _is_ours(self, pid: int) -> bool:
        # Redis works in its --dir: a live server there is serving our data.
        program = process_argv0(pid)
        return (
            any(name in program for name in SERVER_NAMES)
            and process_cwd(pid) == self.data_dir.resolve()
        )

    def _leftover_pids(self) -> set[int]:
        pids: set[int] = set()
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and is_process_running(pid) and self._is_ours(pid):
            pids.add(pid)
        elif self.pid_path.exists():
            logger.info(
                "redis %s: removing stale pid file (pid %s)", self.data_dir, pid
            )
            with contextlib.suppress(FileNotFoundError):
                self.pid_path.unlink()
        # A server killed before writing its pid file is still found by its folder.
        for name in SERVER_NAMES:
            pids |= processes_working_in(self.data_dir, name)
        return pids

    def _stop_leftovers(self) -> None:
        for pid in sorted(self._leftover_pids()):
            say(self._log, f"Redis: stopping a leftover redis-server (pid {pid})")
            terminate(pid, REDIS_TERM_GRACE_SECS)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        client = redis.Redis(
            host=HOST,
            port=self.port,
            password=self.password,
            socket_timeout=1,
            socket_connect_timeout=1,
        )
        last_error = ""
        try:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise RuntimeError(
                        f"redis-server exited with code {code} while starting on "
                        f"{HOST}:{self.port}.\nLast lines of {self.log_path}:\n"
                        f"{log_tail(self.log_path)}"
                    )
                try:
                    if client.ping():
                        return
                except redis.RedisError as exc:  # refused, or LOADING the AOF
                    last_error = str(exc)
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"Redis on {HOST}:{self.port} did not answer PING within "
                        f"{self._start_timeout_secs:.0f} s ({last_error}).\n"
                        f"Last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                    )
                time.sleep(0.05)
        finally:
            client.close()
