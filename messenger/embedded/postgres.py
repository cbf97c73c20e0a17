"""An embedded PostgreSQL cluster under a folder, for `messenger run` and the tests.

PostgreSQL is started with `pg_ctl`, which daemonises it: a caller that dies without
calling stop() leaves it running, and the next start() on the same folder finds and
reuses it (LocalServers in stack.py stops it on every exit it sees).

As root, the cluster runs as the `postgres` system user (accounts.py). When that
user cannot reach the requested folder (anything under /root or pytest's tmp_path),
the cluster lives under /var/tmp instead and a LOCATION.txt in the requested folder
says where; binaries it cannot reach (a virtualenv under /root) are copied there too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

import psycopg2
from psycopg2 import errors as pg_errors
from psycopg2 import sql

from messenger.embedded.accounts import Account, can_enter, postgres_account, run_as
from messenger.embedded.binaries import PostgresBinaries, find_postgres_binaries
from messenger.embedded.processes import (
    HOST,
    Server,
    ensure_port_free,
    folder_lock,
    is_process_running,
    log_tail,
    make_dirs,
    process_cwd,
    read_or_create_password,
    say,
    wait_until_gone,
)

logger = logging.getLogger(__name__)

# A cold start (initdb + first start) takes 1-3 s on a laptop; a loaded CI box can be
# ten times slower. Past this something is wrong, and the error shows the server log.
START_TIMEOUT_SECS = 30.0
# A fast shutdown only waits for backends to abort and a checkpoint to finish.
STOP_TIMEOUT_SECS = 30.0
# The superuser initdb creates; the DSNs connect as it (with its password).
PG_SUPERUSER = "messenger"
# Every user can enter it: clusters (and binaries) that the postgres user could not
# reach where they were asked for go here.
PG_FALLBACK_ROOT = Path("/var/tmp")

# In the cluster's home once the superuser has a password (clusters made before
# passwords get one on their next start).
_PASSWORD_SET = ".password-set"

_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def reachable_binaries(
    binaries: PostgresBinaries, account: Account | None
) -> PostgresBinaries:
    """Binaries that account can run: the same ones, or a copy under /var/tmp.

    The pgserver wheel lives in the virtualenv; a virtualenv under /root is private
    to root, so the postgres user gets a copy of the installation (bin, lib, share:
    PostgreSQL finds its files relative to its binaries), made once per version.
    A wheel's binaries also find their bundled libraries relative to themselves
    (RPATH $ORIGIN/../../../pgserver.libs): the copy keeps that layout.
    """
    if account is None or can_enter(account, binaries.bin_dir):
        return binaries
    install = binaries.install_dir
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    target = PG_FALLBACK_ROOT / f"messenger-pgbin-{binaries.version}-{digest}"
    # site-packages/pgserver/pginstall -> target/pgserver/pginstall, and the wheel's
    # site-packages/pgserver.libs -> target/pgserver.libs.
    package = install.parent
    copies = [(install, Path(package.name) / install.name)]
    libs = package.with_name(f"{package.name}.libs")
    if libs.is_dir():
        copies.append((libs, Path(libs.name)))
    if not (target / ".complete").exists():
        logger.warning(
            "the %s user cannot reach %s: copying PostgreSQL to %s",
            account.name,
            install,
            target,
        )
        partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        for source, relative in copies:
            shutil.copytree(source, partial / relative, symlinks=True)
        for folder in (partial, *(partial / rel for _, rel in copies)):
            folder.chmod(0o755)
        (partial / ".complete").write_text(f"{install}\n")
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):  # a concurrent starter won the race
            partial.rename(target)
        shutil.rmtree(partial, ignore_errors=True)
    copied = PostgresBinaries(
        target / copies[0][1] / binaries.bin_dir.name,
        binaries.version,
        f"{binaries.source}, copied to {target}",
    )
    if not can_enter(account, copied.bin_dir):
        raise RuntimeError(
            f"PostgreSQL binaries in {copied.bin_dir} are not reachable by the "
            f"{account.name} user."
        )
    return copied


def _postmaster_port(cluster: Path) -> int | None:
    """The port written in postmaster.pid (its fourth line), if readable."""
    try:
        return int((cluster / "postmaster.pid").read_text().split("\n")[3])
    except (OSError, ValueError, IndexError):
        return None


class EmbeddedPostgres(Server):
    """A PostgreSQL cluster kept under a folder, listening on 127.0.0.1:port only.

    Layout of the folder: `pgdata/` (the cluster), `postgresql.log` (server log),
    `pgdata/messenger.conf` (our settings, rewritten on every start).

    Connections come from 127.0.0.1 only and need the superuser's password
    (scram-sha-256), kept in data_dir/password (mode 0600) and carried by dsn():
    other local users can reach loopback, but not the messages. No Unix socket
    is created. A cluster made before passwords (trust) gets one on its next
    start.

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

    @property
    def password(self) -> str:
        """The superuser's password (data_dir/password, mode 0600; made on first
        use, see processes.py)."""
        return read_or_create_password(self.data_dir)

    def dsn(self, database: str = "messenger") -> str:
        """A libpq URI for psycopg2.connect(), as the superuser, password included."""
        return (
            f"postgresql://{PG_SUPERUSER}:{quote(self.password, safe='')}@{HOST}:"
            f"{self.port}/{quote(database, safe='')}"
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
        account = postgres_account()
        make_dirs(self.data_dir)
        with folder_lock(self.data_dir, self._start_timeout_secs):
            binaries = reachable_binaries(find_postgres_binaries(), account)
            self.binaries_source = binaries.source
            home = self._prepare_home(account)
            self.home = home
            cluster = home / "pgdata"
            log_path = home / "postgresql.log"
            pid = self._running_pid(cluster)
            if pid is None:
                # Fail before a slow initdb when the port is not ours to take.
                ensure_port_free(self.port, "PostgreSQL")
            if not (home / ".initialized").exists():
                if pid is not None:
                    self._stop_server(cluster, immediate=True)
                    pid = None
                self._initdb(account, binaries, home, cluster)
                (home / _PASSWORD_SET).touch()
            self._check_version(binaries, cluster)
            changed = self._write_settings(account, cluster)
            has_password = (home / _PASSWORD_SET).exists()
            if has_password:
                changed = self._write_hba(account, cluster) or changed
            if pid is not None and (changed or _postmaster_port(cluster) != self.port):
                say(self._log, f"PostgreSQL: settings changed, restarting pid {pid}")
                self._stop_server(cluster, immediate=False)
                pid = None
                ensure_port_free(self.port, "PostgreSQL")
            if pid is not None:
                say(
                    self._log,
                    f"PostgreSQL: reusing the running cluster (pid {pid}) in {cluster}",
                )
            try:
                if pid is None:
                    self._pg_ctl_start(account, binaries, cluster, log_path, deadline)
                self._wait_ready(log_path, deadline)
                if not has_password:
                    # A cluster of an earlier version (trust): set the password,
                    # then require it.
                    say(self._log, "PostgreSQL: setting the superuser's password")
                    self._set_password()
                    self._write_hba(account, cluster)
                    self._reload()
                    (home / _PASSWORD_SET).touch()
                self._create_databases()
            except BaseException:
                # Leave no half-started server behind a failed start.
                with contextlib.suppress(Exception):
                    self._stop_server(cluster, immediate=True)
                raise
        say(
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
        make_dirs(self.data_dir)
        with folder_lock(self.data_dir, STOP_TIMEOUT_SECS):
            pid = self._running_pid(cluster)
            if pid is None:
                return
            self._stop_server(cluster, immediate=False)
        say(self._log, f"PostgreSQL: stopped (pid {pid})")

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

    def _prepare_home(self, account: Account | None) -> Path:
        if account is None:
            return self.data_dir
        if can_enter(account, self.data_dir.parent):
            home = self.data_dir
        else:
            home = self.fallback_home
            say(
                self._log,
                f"PostgreSQL: the {account.name} user cannot enter {self.data_dir} "
                f"(a parent folder is private to root), so the cluster lives in {home}",
                warning=True,
            )
            make_dirs(home)
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
            cwd = process_cwd(pid)
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
        account: Account | None,
        binaries: PostgresBinaries,
        home: Path,
        cluster: Path,
    ) -> None:
        if cluster.exists():
            # An initdb interrupted by a kill: nothing in it was ever served.
            say(self._log, f"PostgreSQL: removing half-initialised cluster {cluster}")
            shutil.rmtree(cluster)
        say(self._log, f"PostgreSQL: creating a cluster in {cluster}")
        # initdb runs as the server's account: it reads the password from a
        # copy that account owns (0600), removed right after.
        pwfile = home / ".initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.password + "\n")
        if account is not None:
            os.chown(pwfile, account.uid, account.gid)
        try:
            result = run_as(
                account,
                [
                    binaries.tool("initdb"),
                    "-D",
                    str(cluster),
                    "-U",
                    PG_SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                ],
                cwd=home,
                timeout_secs=120,
            )
        finally:
            pwfile.unlink()
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

    def _write_settings(self, account: Account | None, cluster: Path) -> bool:
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
            # Group commit: with 5 or more other transactions open, a commit waits
            # up to 200 µs for theirs, so one WAL flush makes several durable.
            # Concurrent sends (one synchronous commit each) are what it serves;
            # a lone commit never waits (issue #13).
            "commit_delay = 200\n"
            "commit_siblings = 5\n"
            "timezone = 'UTC'\n"
            "log_timezone = 'UTC'\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
            # An error's log entry quotes its statement by default, and a send's
            # statement holds the message body: log no message bodies.
            "log_min_error_statement = 'panic'\n"
            "log_parameter_max_length_on_error = 0\n"
            # `messenger move-shard` copies a shard with logical replication.
            "wal_level = logical\n"
            "max_replication_slots = 16\n"
            "max_wal_senders = 16\n"
            "max_logical_replication_workers = 8\n"
            "max_worker_processes = 16\n"
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
        account: Account | None,
        binaries: PostgresBinaries,
        cluster: Path,
        log_path: Path,
        deadline: float,
    ) -> None:
        remaining = max(deadline - time.monotonic(), 1.0)
        say(self._log, f"PostgreSQL: starting on {HOST}:{self.port} from {cluster}")
        try:
            result = run_as(
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
                f"Last lines of {log_path}:\n{log_tail(log_path)}"
            )

    def _stop_server(self, cluster: Path, *, immediate: bool) -> None:
        """Stop the postmaster by signal, as `pg_ctl stop` does (no binaries needed).

        A fast shutdown (SIGINT) aborts sessions and writes a checkpoint; if that
        does not finish in time, an immediate one (SIGQUIT) follows.
        """
        pid = self._running_pid(cluster)
        if pid is None:
            return
        modes: list[tuple[str, int]] = [("immediate", signal.SIGQUIT)]
        if not immediate:
            modes.insert(0, ("fast", signal.SIGINT))
        for mode, signum in modes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
            if wait_until_gone(pid, STOP_TIMEOUT_SECS):
                return
            logger.warning("cluster %s: %s shutdown timed out", cluster, mode)
        raise RuntimeError(
            f"PostgreSQL (pid {pid}) in {cluster} did not stop.\n"
            f"Last lines of the log:\n{log_tail(cluster.parent / 'postgresql.log')}"
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
                    f"Last lines of {log_path}:\n{log_tail(log_path)}"
                )
            time.sleep(0.1)

    def _write_hba(self, account: Account | None, cluster: Path) -> bool:
        """Require the password on 127.0.0.1 (nothing else may connect); returns
        whether pg_hba.conf changed."""
        rules = (
            "# Written by messenger.embedded on every start: edits are overwritten.\n"
            "# TCP on 127.0.0.1 only (no Unix socket), with the password.\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        path = cluster / "pg_hba.conf"
        try:
            if path.read_text() == rules:
                return False
        except OSError:
            pass
        path.write_text(rules)
        if account is not None:
            os.chown(path, account.uid, account.gid)
        return True

    def _set_password(self) -> None:
        conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD %s").format(
                        sql.Identifier(PG_SUPERUSER)
                    ),
                    (self.password,),
                )
        finally:
            conn.close()

    def _reload(self) -> None:
        conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT pg_reload_conf()")
        finally:
            conn.close()

    def _create_databases(self) -> None:
        for name in self.databases:
            self.create_database(name)

    def create_database(self, name: str) -> None:
        """Create a database on the running server unless it exists."""
        conn = psycopg2.connect(self.dsn("postgres"), connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is not None:
                    return
                say(self._log, f"PostgreSQL: creating database {name}")
                # A concurrent starter may create it between the check and here.
                with contextlib.suppress(pg_errors.DuplicateDatabase):
                    cur.execute(
                        sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                    )
        finally:
            conn.close()
