"""Nothing outlives a test run: servers stopped, folders removed, on every way out.

Each case runs an inner pytest (in a subprocess) on a tiny test file that uses the
real `services` fixture of tests/conftest.py, records the servers it got, and then
fails, errors in a fixture, or waits to be interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from messenger.embedded import LocalServers, free_port, is_process_running
from tests.conftest import remove_abandoned_runs

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
INNER_RUN_SECS = 120.0
PROCESS_EXIT_SECS = 15.0

INNER_CONFTEST = """
from tests.conftest import *  # noqa: F403 - the real fixtures and hooks
"""

INNER_TESTS = """
import json, os, time
from pathlib import Path

import pytest


def record(services):
    Path(os.environ["RECORD"]).write_text(json.dumps({
        "root": str(services.root),
        "pg": services.pg.pid,
        "redis": services.redis.pid,
    }))


@pytest.fixture
def broken(services):
    record(services)
    raise RuntimeError("a fixture that errors")


def test_fails(services):
    record(services)
    assert False, "a test that fails"


def test_fixture_errors(broken):
    pass


def test_waits(services):
    record(services)
    time.sleep(60)
"""


def processes_under(root: str) -> list[int]:
    """Live processes whose command line or working folder is inside root."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if root in cmdline or proc.cwd().startswith(root):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return [pid for pid in found if is_process_running(pid)]


def wait_until_gone(pids: list[int]) -> bool:
    deadline = time.monotonic() + PROCESS_EXIT_SECS
    while any(is_process_running(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def inner(tmp_path: Path) -> Iterator[Path]:
    """A folder with the inner test file and a conftest reusing ours."""
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    yield tmp_path


def start_inner(folder: Path, test: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RECORD": str(folder / "rec")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.gevent_patch",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:valkey",
            "-q",
            "--rootdir",
            str(folder),
            f"{folder / 'test_inner.py'}::{test}",
        ],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # Its own process group: a signal meant for it never reaches this run.
        start_new_session=True,
    )


def read_record(folder: Path, process: subprocess.Popen[bytes]) -> dict[str, object]:
    """Wait (bounded) until the inner test has recorded its servers."""
    deadline = time.monotonic() + INNER_RUN_SECS
    record = folder / "rec"
    while not record.exists() or not record.read_text():
        assert process.poll() is None or record.exists(), "inner run ended early"
        assert time.monotonic() < deadline, "inner run never got its servers"
        time.sleep(0.1)
    return json.loads(record.read_text())  # type: ignore[no-any-return]


def assert_nothing_left(record: dict[str, object]) -> None:
    root = str(record["root"])
    pids = [int(record["pg"]), int(record["redis"])]  # type: ignore[call-overload]
    assert all(pid > 0 for pid in pids)
    assert wait_until_gone(pids), "a server of the inner run is still running"
    assert processes_under(root) == []
    assert not Path(root).exists(), f"{root} was left behind"


@pytest.mark.parametrize(
    ("test", "exit_code"),
    [("test_fails", 1), ("test_fixture_errors", 1)],
)
def test_failed_run_stops_its_servers_and_removes_its_folder(
    inner: Path, test: str, exit_code: int
) -> None:
    process = start_inner(inner, test)
    try:
        output, _ = process.communicate(timeout=INNER_RUN_SECS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == exit_code, output.decode(errors="replace")
    assert_nothing_left(read_record(inner, process))


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_interrupted_run_stops_its_servers_and_removes_its_folder(
    inner: Path, signum: int
) -> None:
    process = start_inner(inner, "test_waits")
    try:
        record = read_record(inner, process)
        process.send_signal(signum)
        output, _ = process.communicate(timeout=INNER_RUN_SECS)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # pytest's exit code for an interrupted session.
    assert process.returncode == 2, output.decode(errors="replace")
    assert_nothing_left(record)


def test_next_run_cleans_up_after_a_killed_run(inner: Path) -> None:
    process = start_inner(inner, "test_waits")
    try:
        record = read_record(inner, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # kill -9 runs no teardown: the servers are still there...
    assert is_process_running(int(record["pg"]))  # type: ignore[call-overload]
    # ...until the next run's session fixture (this function) finds them (or
    # another test session on the machine did it first).
    remove_abandoned_runs()
    assert_nothing_left(record)


def test_failed_start_stops_what_was_started_and_removes_the_folder() -> None:
    root = Path(tempfile.mkdtemp(prefix="messenger-stack-test-", dir="/var/tmp"))
    root.chmod(0o755)
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        taken = stranger.getsockname()[1]
        servers = LocalServers(
            root,
            pg_port=free_port(),
            redis_port=taken,
            persistent=False,
            remove_on_stop=True,
        )
        with pytest.raises(RuntimeError, match=f"port {taken}"):
            servers.start()
    # PostgreSQL had started before Redis failed: it must be gone with the folder.
    assert processes_under(str(root)) == []
    assert not root.exists()
