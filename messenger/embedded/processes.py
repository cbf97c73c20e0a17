"""Process, port and folder utilities for the embedded servers (through psutil)."""

from __future__ import annotations

import abc
import contextlib
import ctypes
import fcntl
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
# Lines of a server log quoted in an error.
LOG_TAIL_LINES = 30
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on HOST:port now.

    Binds the way servers do (SO_REUSEADDR): connections lingering in TIME_WAIT do
    not count, a listening socket on the port or on 0.0.0.0 does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def ensure_port_free(port: int, server: str) -> None:
    """Raise a RuntimeError naming the port when another program listens on it."""
    if not port_is_free(port):
        raise RuntimeError(
            f"{server}: port {port} on {HOST} is already in use by another program; "
            "stop it or choose another port."
        )


def is_process_running(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie counts as exited)."""
    if pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() not in (
            psutil.STATUS_ZOMBIE,
            psutil.STATUS_DEAD,
        )
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def process_cwd(pid: int) -> Path | None:
    """Working folder of a process, or None when it can't be read."""
    try:
        return Path(psutil.Process(pid).cwd())
    except (psutil.Error, OSError):
        return None


def process_argv0(pid: int) -> str:
    """The program a process runs (its first argument), or "" when unknown."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return ""
    return cmdline[0] if cmdline else ""


def processes_working_in(folder: Path, program: str) -> set[int]:
    """Pids of live processes whose program name contains `program` and whose
    working folder is `folder` (a server started in its data folder)."""
    wanted = folder.resolve()
    found: set[int] = set()
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            argv0 = (proc.info["cmdline"] or [""])[0]
            if program not in argv0 and program not in (proc.info["name"] or ""):
                continue
            if Path(proc.cwd()) == wanted and is_process_running(proc.pid):
                found.add(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def wait_until_gone(pid: int, timeout_secs: float) -> bool:
    """Wait (bounded) until a process has exited; return whether it did."""
    deadline = time.monotonic() + timeout_secs
    while is_process_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(pid: int, grace_secs: float) -> None:
    """SIGTERM a process, SIGKILL it after grace_secs; wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_until_gone(pid, grace_secs):
        return
    logger.warning(
        "pid %s: still running %.0f s after SIGTERM, killing", pid, grace_secs
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_until_gone(pid, 5.0):
        raise RuntimeError(f"Process {pid} survived SIGKILL.")


def die_with_parent_hook() -> Callable[[], None]:
    """A preexec_fn asking Linux to SIGTERM the child when its parent thread exits.

    The signal follows the *thread* that forked, so start children from a thread
    that lives as long as the process (the main thread, in practice).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    parent_pid = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def child_hook() -> Callable[[], None] | None:
    """die_with_parent_hook() on Linux, None elsewhere (for Popen's preexec_fn)."""
    return die_with_parent_hook() if sys.platform.startswith("linux") else None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a server log, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"({path} is empty)"


@contextlib.contextmanager
def folder_lock(folder: Path, timeout_secs: float) -> Iterator[None]:
    """Hold an exclusive lock on folder/.embedded.lock (two starts on one folder)."""
    with open(folder / ".embedded.lock", "a") as lock_file:
        deadline = time.monotonic() + timeout_secs
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"Another process holds {folder}/.embedded.lock for more "
                        f"than {timeout_secs:.0f} s."
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def make_dirs(path: Path, mode: int = 0o755) -> None:
    """Create path and its missing parents with mode, whatever the umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            folder.chmod(mode)


# The file, under a server's folder, holding the password clients connect with.
PASSWORD_FILE = "password"


def share_password(folder: Path, password: str) -> None:
    """Make `password` the one kept in folder/password (mode 0600): servers that
    clients reach with one password (the nodes of a Redis Cluster) share it."""
    make_dirs(folder, 0o700)
    partial = folder / f".{PASSWORD_FILE}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    partial.replace(folder / PASSWORD_FILE)


def read_or_create_password(folder: Path) -> str:
    """The password kept in folder/password, made (random, mode 0600) when missing.

    The embedded servers listen on loopback only, but any local user can reach
    loopback: without a password they could read every message in PostgreSQL,
    and through Redis make validly signed fake pushes.
    """
    path = folder / PASSWORD_FILE
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    make_dirs(folder, 0o700)
    password = secrets.token_urlsafe(24)
    partial = path.with_name(f".{PASSWORD_FILE}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    try:
        os.link(partial, path)  # a concurrent starter's password wins
    except FileExistsError:
        pass
    finally:
        partial.unlink()
    return path.read_text().strip()


def say(
    log: Callable[[str], None] | None, message: str, *, warning: bool = False
) -> None:
    """A progress line: to `log` when given, else (and for warnings) to the logger."""
    if warning:
        logger.warning("%s", message)
    elif log is None:
        logger.info("%s", message)
    if log is not None:
        log(message)


class Server(abc.ABC):
    """Something started by start() and stopped by stop(); `with` does both."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start; idempotent."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop whatever runs; idempotent, and fine when nothing does."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
