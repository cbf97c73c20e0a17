"""Tests of messenger.embedded against the real PostgreSQL and Redis binaries.

Self-contained on purpose: these fixtures start their own servers in folders under
/var/tmp (enterable by the postgres user, unlike pytest's tmp_path when run as root).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest
import redis

from messenger.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    LocalServers,
    find_postgres_binaries,
    find_redis_server,
    free_port,
    is_process_running,
    processes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Bounds for waits on processes that the tests kill or expect to die.
PROCESS_EXIT_SECS = 10.0
OWNER_READY_SECS = 30.0

Server = EmbeddedPostgres | EmbeddedRedis


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="messenger-embedded-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stop_later() -> Iterator[Callable[[Server], Server]]:
    """Register a server to be stopped at teardown, whatever the test did."""
    servers: list[Server] = []

    def register(server: Server) -> Server:
        servers.append(server)
        return server

    yield register
    for server in reversed(servers):
        server.stop()


def wait_until_gone(pid: int) -> bool:
    return processes.wait_until_gone(pid, PROCESS_EXIT_SECS)


def pg_rows(pg: EmbeddedPostgres) -> list[str]:
    with psycopg2.connect(pg.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT note FROM notes ORDER BY note")
        rows = [row[0] for row in cur.fetchall()]
    conn.close()
    return rows


def pg_insert(pg: EmbeddedPostgres, note: str) -> None:
    with psycopg2.connect(pg.dsn()) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS notes (note text)")
        cur.execute("INSERT INTO notes VALUES (%s)", (note,))
    conn.close()


def redis_client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_free_port_is_free_until_a_server_listens_on_it() -> None:
    from messenger.embedded.processes import port_is_free

    port = free_port()
    assert 1024 < port < 65536
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)
    assert port_is_free(port)


def test_data_survives_stop_and_start(
    folder: Path, stop_later: Callable[[Server], Server]
) -> None:
    pg = EmbeddedPostgres(folder / "postgres", free_port(), databases=("messenger",))
    rd = EmbeddedRedis(folder / "redis", free_port())
    stop_later(pg)
    stop_later(rd)

    pg.start()
    pg.start()  # idempotent
    rd.start()
    rd.start()
    # Which binaries ran is said (system ones or the wheels', whichever is here).
    assert str(find_postgres_binaries().bin_dir) in pg.binaries_source
    assert str(find_redis_server().path) in rd.binaries_source
    pg_insert(pg, "kept")
    with redis_client(rd) as client:
        client.set("greeting", "kept")
    pg_pid, redis_pid = pg.pid, rd.pid
    assert pg_pid is not None and redis_pid is not None

    pg.stop()
    rd.stop()
    pg.stop()  # idempotent, no error
    rd.stop()
    assert not is_process_running(pg_pid)
    assert not is_process_running(redis_pid)
    assert pg.pid is None and rd.pid is None

    pg.start()
    rd.start()
    assert pg_rows(pg) == ["kept"]
    with redis_client(rd) as client:
        assert client.get("greeting") == b"kept"


def test_postgres_listens_on_loopback_tcp_only(
    folder: Path, stop_later: Callable[[Server], Server]
) -> None:
    pg = EmbeddedPostgres(folder / "postgres", free_port())
    stop_later(pg)
    pg.start()
    with psycopg2.connect(pg.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SHOW listen_addresses")
        assert cur.fetchone() == ("127.0.0.1",)
        cur.execute("SHOW unix_socket_directories")
        assert cur.fetchone() == ("",)
        cur.execute("SHOW max_connections")
        assert cur.fetchone() == ("300",)
        # Group commit for concurrent sends.
        cur.execute("SHOW commit_delay")
        assert cur.fetchone() == ("200",)
        cur.execute("SHOW commit_siblings")
        assert cur.fetchone() == ("5",)
    conn.close()
    assert pg.log_path.is_file()


def test_running_cluster_moves_to_a_new_port(
    folder: Path, stop_later: Callable[[Server], Server]
) -> None:
    first = EmbeddedPostgres(folder / "postgres", free_port())
    stop_later(first)
    first.start()
    pg_insert(first, "moved")
    old_pid = first.pid
    assert old_pid is not None

    second = EmbeddedPostgres(folder / "postgres", free_port())
    stop_later(second)
    second.start()

    assert second.pid != old_pid
    assert wait_until_gone(old_pid)
    assert pg_rows(second) == ["moved"]


def test_stale_postmaster_pid_does_not_block_a_start(
    folder: Path, stop_later: Callable[[Server], Server]
) -> None:
    pg = EmbeddedPostgres(folder / "postgres", free_port())
    stop_later(pg)
    pg.start()
    pg.stop()
    # A recycled pid: alive, but not a postmaster working in this cluster.
    (pg.cluster_dir / "postmaster.pid").write_text(f"{os.getpid()}\n")
    pg.start()
    assert pg.pid is not None and pg.pid != os.getpid()


OWNER_SCRIPT = """
import json, sys, time
from pathlib import Path
import psycopg2, redis
from messenger.embedded import EmbeddedPostgres, EmbeddedRedis

folder, pg_port, redis_port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
pids = {}
if pg_port:
    pg = EmbeddedPostgres(folder / "postgres", pg_port)
    pg.start()
    with psycopg2.connect(pg.dsn()) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE notes (note text)")
        cur.execute("INSERT INTO notes VALUES ('from the dead owner')")
    conn.close()
    pids["postgres"] = pg.pid
rd = EmbeddedRedis(folder / "redis", redis_port, kill_with_parent=sys.argv[4] == "1")
rd.start()
redis.Redis.from_url(rd.url).set("owner", "dead")
pids["redis"] = rd.pid
print(json.dumps(pids), flush=True)
time.sleep(60)
"""


def run_owner_and_sigkill_it(
    folder: Path, pg_port: int, redis_port: int, *, kill_with_parent: bool
) -> dict[str, int]:
    """Start servers in a child process, then SIGKILL it; return the servers' pids."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    args = [
        str(folder),
        str(pg_port),
        str(redis_port),
        "1" if kill_with_parent else "0",
    ]
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER_SCRIPT, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert owner.stdout is not None
        ready, _, _ = select.select([owner.stdout], [], [], OWNER_READY_SECS)
        assert ready, "the owner process did not start its servers in time"
        line = owner.stdout.readline()
        assert line, f"the owner process exited with {owner.wait(5)}"
        pids: dict[str, int] = json.loads(line)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(PROCESS_EXIT_SECS)
        if owner.stdout is not None:
            owner.stdout.close()
    return pids


def test_start_after_a_sigkilled_owner_reuses_postgres_and_replaces_redis(
    folder: Path, stop_later: Callable[[Server], Server]
) -> None:
    pg_port, redis_port = free_port(), free_port()
    old = run_owner_and_sigkill_it(folder, pg_port, redis_port, kill_with_parent=False)
    # The owner's death killed neither server: this is the situation to recover from.
    assert is_process_running(old["postgres"])
    assert is_process_running(old["redis"])

    pg = EmbeddedPostgres(folder / "postgres", pg_port)
    rd = EmbeddedRedis(folder / "redis", redis_port)
    stop_later(pg)
    stop_later(rd)
    pg.start()
    rd.start()

    assert pg.pid == old["postgres"]
    assert wait_until_gone(old["redis"])
    assert rd.pid is not None and rd.pid != old["redis"]
    assert pg_rows(pg) == ["from the dead owner"]
    with redis_client(rd) as client:
        assert client.get("owner") == b"dead"

    pg.stop()
    rd.stop()
    assert not is_process_running(old["postgres"])
    assert not (pg.cluster_dir / "postmaster.pid").exists()
    assert not rd.pid_path.exists()


def test_redis_dies_with_a_sigkilled_owner(folder: Path) -> None:
    old = run_owner_and_sigkill_it(folder, 0, free_port(), kill_with_parent=True)
    assert wait_until_gone(old["redis"])


def test_stale_pid_files_do_not_block_a_start(
    folder: Path, stop_later: Callable[[Server], Server]
) -> None:
    rd = EmbeddedRedis(folder / "redis", free_port(), persistent=False)
    stop_later(rd)
    rd.data_dir.mkdir()
    # A pid that is alive but is not a Redis serving this folder: our own.
    rd.pid_path.write_text(f"{os.getpid()}\n")
    rd.start()
    assert rd.pid is not None and rd.pid != os.getpid()


def test_ports_taken_by_another_program_are_named(folder: Path) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port}"):
            EmbeddedRedis(folder / "redis", port).start()
        with pytest.raises(RuntimeError, match=f"port {port}"):
            EmbeddedPostgres(folder / "postgres", port).start()
    assert not (folder / "postgres" / "pgdata").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as postgres")
def test_folder_private_to_root_moves_the_cluster_to_var_tmp(
    tmp_path: Path, stop_later: Callable[[Server], Server]
) -> None:
    # pytest's tmp_path is 0700 root: the postgres user cannot enter it.
    pg = EmbeddedPostgres(tmp_path / "postgres", free_port())
    stop_later(pg)
    try:
        pg.start()
        assert pg.home == pg.fallback_home
        assert str(pg.cluster_dir).startswith("/var/tmp/messenger-pg-")
        assert str(pg.fallback_home) in (pg.data_dir / "LOCATION.txt").read_text()
        with psycopg2.connect(pg.dsn()) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == ("messenger",)
        conn.close()
    finally:
        pg.stop()
        shutil.rmtree(pg.fallback_home, ignore_errors=True)


def test_missing_binaries_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="apt-get install -y postgresql"):
        find_postgres_binaries(search_path="", system_root=tmp_path, packages=())
    with pytest.raises(RuntimeError, match="apt-get install -y redis-server"):
        find_redis_server(search_path="", system_dirs=(), packages=())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as postgres")
def test_wheel_binaries_the_postgres_user_cannot_reach_are_copied_and_run(
    tmp_path: Path,
) -> None:
    from messenger.embedded.accounts import postgres_account, run_as
    from messenger.embedded.binaries import PostgresBinaries, package_dir
    from messenger.embedded.postgres import reachable_binaries

    wheel = package_dir("pgserver")
    if wheel is None:
        pytest.skip("the pgserver wheel is not installed (pip install pgserver)")
    # A virtualenv under a folder private to root (pytest's tmp_path is 0700).
    site = tmp_path / "site-packages"
    shutil.copytree(wheel / "pginstall", site / "pgserver" / "pginstall", symlinks=True)
    libs = wheel.with_name("pgserver.libs")
    if libs.is_dir():
        shutil.copytree(libs, site / "pgserver.libs", symlinks=True)
    private = PostgresBinaries(
        site / "pgserver" / "pginstall" / "bin", "16.2", "pgserver wheel"
    )
    account = postgres_account()
    assert account is not None
    with pytest.raises(PermissionError):  # as the postgres user, as it stands
        run_as(account, [private.tool("postgres")], cwd=Path("/"), timeout_secs=10)

    copied = reachable_binaries(private, account)
    try:
        assert str(copied.bin_dir).startswith("/var/tmp/messenger-pgbin-")
        for tool in ("postgres", "initdb", "pg_ctl"):
            done = run_as(
                account,
                [copied.tool(tool), "--version"],
                cwd=Path("/"),
                timeout_secs=10,
            )
            assert done.returncode == 0, done.stderr
            assert "16." in done.stdout
        # Made once: a second call reuses the copy.
        assert reachable_binaries(private, account) == copied
    finally:
        shutil.rmtree(copied.bin_dir.parents[2], ignore_errors=True)


def test_embedded_servers_need_their_passwords(
    folder: Path, stop_later: Callable[[Server], Server]
) -> None:
    # Without passwords any local user could read every message in PostgreSQL
    # and, through Redis, make validly signed fake pushes.
    servers = LocalServers(folder, pg_port=free_port(), redis_port=free_port())
    stop_later(servers.pg)
    stop_later(servers.redis)
    servers.start()
    for server_dir in (servers.pg.data_dir, servers.redis.data_dir):
        password = server_dir / "password"
        assert password.stat().st_mode & 0o777 == 0o600
        assert len(password.read_text().strip()) >= 24
    assert servers.redis.data_dir.stat().st_mode & 0o777 == 0o700
    # With the password (dsn(), url): in. Without it, or with another: refused.
    assert redis.Redis.from_url(servers.redis.url).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=servers.redis.port).ping()
    with pytest.raises(redis.RedisError):
        redis.Redis(host="127.0.0.1", port=servers.redis.port, password="x").ping()
    psycopg2.connect(servers.pg.dsn("postgres")).close()
    no_password = f"postgresql://messenger@127.0.0.1:{servers.pg.port}/postgres"
    for dsn in (no_password, no_password.replace("messenger@", "messenger:x@")):
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(dsn, connect_timeout=5).close()
    # The password is in no process's command line.
    secret = servers.redis.password
    for pid in (servers.redis.pid, servers.pg.pid):
        assert pid is not None
        assert secret not in " ".join(psutil.Process(pid).cmdline())


def test_a_cluster_made_before_passwords_gets_one(
    folder: Path, stop_later: Callable[[Server], Server]
) -> None:
    pg = EmbeddedPostgres(folder / "pg", free_port())
    stop_later(pg)
    pg.start()
    pg_insert(pg, "kept")
    pg.stop()
    # As an earlier version left it: trust on loopback, no password set.
    home = pg.cluster_dir.parent
    (home / ".password-set").unlink()
    (pg.cluster_dir / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")
    (pg.data_dir / "password").unlink()
    pg.start()
    assert pg_rows(pg) == ["kept"]  # with the new password, in dsn()
    no_password = f"postgresql://messenger@127.0.0.1:{pg.port}/messenger"
    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(no_password, connect_timeout=5).close()
