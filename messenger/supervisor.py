"""`messenger run`'s supervisor: restart a PostgreSQL, Redis or push worker that dies.

The loop watches each child by pid. When one is gone it is restarted after an
exponential backoff (RESTART_BACKOFF_BASE_SECS doubling up to the cap); a child that
fails MAX_FAILURES times (deaths and failed restarts alike) within FAILURE_WINDOW_SECS
is not restarted again: the loop raises SupervisionFailed and the caller stops
everything and exits non-zero. Gunicorn supervises its own workers; when the
gunicorn master itself exits, the loop returns its exit code.

PostgreSQL is daemonised by pg_ctl, so it is not our child: it is watched through
its postmaster pid file (EmbeddedPostgres.pid) and its exit status is unknown.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from messenger.embedded import EmbeddedPostgres, EmbeddedRedis
from messenger.embedded.processes import processes_working_in

logger = logging.getLogger(__name__)

# A child failing this many times within the window is broken, not unlucky: a
# restart loop would hide that from the operator, so we stop.
MAX_FAILURES = 5
FAILURE_WINDOW_SECS = 60.0
# The first restart comes quickly (a kill -9 of a healthy server); the next ones
# wait 1, 2, 4... s so a server that cannot start does not spin.
RESTART_BACKOFF_BASE_SECS = 0.5
RESTART_BACKOFF_MAX_SECS = 30.0
# How often the children's pids are checked: bounds the time to notice a death.
CHECK_INTERVAL_SECS = 0.25


class SupervisionFailed(Exception):
    """A child failed too often; the message is one sentence for the operator."""


@dataclass
class Child:
    """One supervised server or worker.

    Attributes:
        name: how logs call it ("PostgreSQL", "Redis", "push worker").
        pid: the pid while it runs, None once it is gone.
        restart: starts it again and returns once it is ready (raises on failure).
        exit_status: describes how the last instance ended ("signal 9", "exit 1").
    """

    name: str
    pid: Callable[[], int | None]
    restart: Callable[[], None]
    exit_status: Callable[[], str] = lambda: "status unknown"
    # Where to read why it failed, for the operator.
    log_path: Path | None = None
    failures: deque[float] = field(default_factory=deque)
    down_since: float | None = None
    restart_at: float = 0.0
    up_since: float = 0.0


def describe_returncode(code: int | None) -> str:
    """A Popen returncode as an operator reads it."""
    if code is None:
        return "status unknown"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit {code}"


class Supervisor:
    """Restarts dead children with backoff; gives up after repeated fast failures."""

    def __init__(
        self,
        children: list[Child],
        *,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        max_failures: int = MAX_FAILURES,
        window_secs: float = FAILURE_WINDOW_SECS,
        backoff_base_secs: float = RESTART_BACKOFF_BASE_SECS,
        backoff_max_secs: float = RESTART_BACKOFF_MAX_SECS,
    ) -> None:
        self.children = children
        self._say = say
        self._clock = clock
        self._sleep = sleep
        self._max_failures = max_failures
        self._window_secs = window_secs
        self._backoff_base_secs = backoff_base_secs
        self._backoff_max_secs = backoff_max_secs
        now = clock()
        for child in children:
            child.up_since = now

    def backoff_secs(self, failures: int) -> float:
        """The wait before restart number `failures` (1-based) within the window."""
        delay = self._backoff_base_secs * 2 ** max(failures - 1, 0)
        return float(min(delay, self._backoff_max_secs))

    def _record_failure(self, child: Child, what: str) -> None:
        now = self._clock()
        child.failures.append(now)
        while child.failures and now - child.failures[0] > self._window_secs:
            child.failures.popleft()
        count = len(child.failures)
        if count >= self._max_failures:
            log = f" ({child.log_path})" if child.log_path else ""
            raise SupervisionFailed(
                f"{child.name} failed {count} times within "
                f"{self._window_secs:.0f} s (last: {what}); giving up and stopping "
                f"everything: read its log{log}, fix the cause and start again."
            )
        delay = self.backoff_secs(count)
        child.restart_at = now + delay
        self._say(
            f"supervisor: {child.name} {what}; restarting in {delay:.1f} s "
            f"(failure {count} of {self._max_failures} allowed in "
            f"{self._window_secs:.0f} s)"
        )

    def check_once(self) -> None:
        """Notice dead children and restart those whose backoff has elapsed.

        Raises:
            SupervisionFailed: a child failed too often.
        """
        for child in self.children:
            if child.down_since is None:
                if child.pid() is not None:
                    continue
                now = self._clock()
                child.down_since = now
                self._record_failure(
                    child,
                    f"exited ({child.exit_status()}) after {now - child.up_since:.1f} "
                    "s up",
                )
            if self._clock() < child.restart_at:
                continue
            try:
                child.restart()
            except Exception as exc:  # noqa: BLE001 - counted; may give up
                logger.warning("supervisor: restarting %s failed", child.name)
                self._record_failure(child, f"did not restart ({exc})")
                continue
            now = self._clock()
            assert child.down_since is not None
            self._say(
                f"supervisor: {child.name} is back (pid {child.pid()}) "
                f"{now - child.down_since:.2f} s after it went down"
            )
            child.down_since = None
            child.up_since = now

    def watch(self, main: subprocess.Popen[bytes]) -> int:
        """Supervise until the main process (gunicorn) exits; return its code.

        Raises:
            SupervisionFailed: a child failed too often.
        """
        while main.poll() is None:
            self.check_once()
            self._sleep(CHECK_INTERVAL_SECS)
        return main.returncode or 0


class ChildProcess:
    """A child process started by a function, restartable (the push worker)."""

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]]) -> None:
        self._start = start
        self.process = start()

    def pid(self) -> int | None:
        """The pid while the process runs."""
        return self.process.pid if self.process.poll() is None else None

    def exit_status(self) -> str:
        """How the last process ended."""
        return describe_returncode(self.process.poll())

    def restart(self) -> None:
        """Start a new process (the old one has exited)."""
        self.process = self._start()

    def stop(self, timeout_secs: float) -> None:
        """SIGTERM the process, SIGKILL it if it has not exited in time."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_secs)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# After a kill -9 of the postmaster its backends linger until they notice; a new
# postmaster refuses to start while they hold the old shared memory.
POSTGRES_BACKENDS_EXIT_SECS = 15.0


def postgres_child(pg: EmbeddedPostgres) -> Child:
    """The embedded PostgreSQL, watched through its postmaster pid file."""

    def restart() -> None:
        cluster = pg.cluster_dir
        deadline = time.monotonic() + POSTGRES_BACKENDS_EXIT_SECS
        while processes_working_in(cluster, "postgres"):
            if time.monotonic() >= deadline:
                break  # start() fails with the server's reason, and is retried
            time.sleep(0.1)
        pg.start()

    return Child(
        "PostgreSQL",
        pid=lambda: pg.pid,
        restart=restart,
        # Not our child (pg_ctl daemonised it): its status went to init.
        exit_status=lambda: "postmaster gone, status unknown; see its log",
        log_path=pg.log_path,
    )


def redis_child(server: EmbeddedRedis) -> Child:
    """The embedded Redis, our child process."""
    return Child(
        "Redis",
        pid=lambda: server.pid,
        restart=server.start,
        exit_status=lambda: describe_returncode(server.returncode),
        log_path=server.log_path,
    )


def process_child(name: str, process: ChildProcess) -> Child:
    """A worker process started by us (the push worker)."""
    return Child(
        name, pid=process.pid, restart=process.restart, exit_status=process.exit_status
    )
