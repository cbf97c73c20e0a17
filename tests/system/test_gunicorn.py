"""The real server: gunicorn with gevent workers, waking across workers, crashes,
Redis outages and graceful shutdown."""

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import gevent
import psutil
import pytest
import redis as redis_lib

from tests.system.conftest import ROOT, Api, Server, start_gunicorn


def _held_workers(redis: redis_lib.Redis, user_id: int) -> set[bytes]:
    return set(redis.zrangebyscore(f"conn:{user_id}", time.time(), "+inf"))


def test_poll_on_one_worker_is_woken_by_send_on_another(
    api: Api, server: Server, services: Any, redis: Any, tmp_path: Path
) -> None:
    """Two gunicorn servers of 2 workers on the same databases and Redis: the poll
    is held by a worker of one, the send handled by a worker of the other, so the
    wake-up must cross processes through Redis (the kernel alone decides which
    worker of one server accepts a connection, and often picks the same one)."""
    other = start_gunicorn(services, tmp_path)
    try:
        sender_api = Api(other.url)
        alice, bob = api.user(), api.user()
        cid = api.direct(alice, bob)
        cursor = api.poll(bob, api.head(bob)).json()["cursor"]
        polls = [gevent.spawn(api.poll, bob, cursor, 30) for _ in range(3)]
        deadline = time.monotonic() + 10
        while not _held_workers(redis, bob.id):
            assert time.monotonic() < deadline, "the polls were never held"
            gevent.sleep(0.02)
        gevent.sleep(0.2)
        holders = _held_workers(redis, bob.id)
        started = time.monotonic()
        assert sender_api.send(alice, cid, "across workers").status_code == 201
        answers = [p.get(timeout=5) for p in polls]
        elapsed = time.monotonic() - started
        assert elapsed < 1.0, elapsed
        # The workers holding the polls belong to the first server only.
        server_pids = {str(pid).encode() for pid in _worker_pids(server)}
        assert {h.split(b":")[1] for h in holders} <= server_pids
        for answer in answers:
            assert answer.status_code == 200
            bodies = [
                e["message"]["body"]
                for e in answer.json()["events"]
                if e["type"] == "message"
            ]
            assert bodies == ["across workers"]
    finally:
        other.stop()


def _worker_pids(server: Server) -> list[int]:
    master = server.process.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def test_sweeper_delivers_message_whose_sender_was_killed(
    api: Api, server: Server, services: Any
) -> None:
    """SIGKILL after the commit, before the fan-out: delivered exactly once."""
    alice, bob = api.user(), api.user()
    cid = api.direct(alice, bob)
    cursor = api.head(bob)
    script = textwrap.dedent(f"""
        import os, signal
        from messenger import runtime
        from messenger.settings import load
        from messenger.storage import messages
        from messenger.storage.transaction import pipelined_transaction
        rt = runtime.build(load())
        with rt.router.on_conversation({cid}, "send_message",
                                       transaction=False) as cur:
            with pipelined_transaction(cur) as tx:
                stored = messages.store(tx, {cid}, {alice.id}, "crash-1", "survivor")
                messages.queue_fanout_and_commit(tx, stored)
        os.kill(os.getpid(), signal.SIGKILL)  # before any fan-out
    """)
    env = dict(os.environ)
    env.update(services.env())
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        timeout=60,
        capture_output=True,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not seen:
        page = api.poll(bob, cursor, timeout=5).json()
        seen += [e["message"] for e in page["events"] if e["type"] == "message"]
        cursor = page["cursor"]
    assert [m["body"] for m in seen] == ["survivor"]
    # Exactly once: nothing more arrives, and a retry of the send is a 200.
    assert api.poll(bob, cursor, timeout=1).json()["events"] == []
    retry = api.send(alice, cid, "survivor", client_msg_id="crash-1")
    assert retry.status_code == 200 and retry.json()["message"]["seq"] == 1
    assert api.poll(bob, cursor, timeout=0.5).json()["events"] == []


def test_redis_outage_degrades_and_recovers(
    api: Api, server: Server, services: Any
) -> None:
    alice, bob = api.user(), api.user()
    cid = api.direct(alice, bob)
    cursor = api.head(bob)
    services.redis.stop()
    try:
        statuses = []
        waiting = gevent.spawn(api.poll, bob, cursor, 20)
        gevent.sleep(0.5)
        sent = api.send(alice, cid, "while redis is down")
        statuses.append(sent.status_code)
        answer = waiting.get(timeout=10)
        statuses.append(answer.status_code)
        assert [e["message"]["body"] for e in answer.json()["events"]] == [
            "while redis is down"
        ]
        cursor = answer.json()["cursor"]
        assert statuses == [201, 200]
    finally:
        services.redis.start()
    # Wake-ups resume by themselves: a held poll answers fast again.
    deadline = time.monotonic() + 30
    while True:
        waiting = gevent.spawn(api.poll, bob, cursor, 20)
        gevent.sleep(0.3)
        started = time.monotonic()
        assert api.send(alice, cid, "after").status_code == 201
        answer = waiting.get(timeout=25)
        cursor = answer.json()["cursor"]
        if time.monotonic() - started < 0.5:
            break
        assert time.monotonic() < deadline, "wake-ups did not resume"
    assert "Traceback" not in server.log()


@pytest.fixture
def one_worker(services: Any, settings: Any, tmp_path: Path) -> Iterator[Server]:
    srv = start_gunicorn(services, tmp_path, workers=1)
    try:
        yield srv
    finally:
        srv.stop(signal.SIGKILL)


def _idle_keep_alive_connection(server: Server) -> socket.socket:
    """A connection that has had one answer and waits, kept alive, for more."""
    host, port = server.url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(4096)
        assert chunk, "the server closed a fresh keep-alive connection"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"connection: close" not in head.lower()
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += conn.recv(4096)
    return conn


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT],
    ids=["SIGTERM", "SIGINT", "SIGQUIT"],
)
def test_stop_signal_answers_held_polls_and_closes_idle_connections(
    one_worker: Server, signum: int
) -> None:
    """SIGTERM is a graceful stop; SIGINT (Ctrl-C) and SIGQUIT are gunicorn's quick
    one, which would drop held polls: all three answer them with the cursor
    unchanged, and idle keep-alive connections are closed rather than holding
    the worker until graceful_timeout (20 s)."""
    api = Api(one_worker.url)
    user = api.user()
    cursor = api.head(user)
    polls = [gevent.spawn(api.poll, user, cursor, 50) for _ in range(3)]
    with closing(_idle_keep_alive_connection(one_worker)) as idle:
        gevent.sleep(1.0)
        started = time.monotonic()
        one_worker.process.send_signal(signum)
        answers = [p.get(timeout=15) for p in polls]
        assert time.monotonic() - started < 5
        for answer in answers:
            assert answer.status_code == 200
            assert answer.json() == {"events": [], "cursor": cursor, "more": False}
        assert idle.recv(4096) == b""  # closed by the server, not timed out
    assert one_worker.process.wait(timeout=15) == 0
    assert time.monotonic() - started < 10
    assert "Traceback" not in one_worker.log()


def test_one_gevent_worker_holds_many_polls_at_once(one_worker: Server) -> None:
    """A sync worker would answer 30 one-second polls one after another."""
    api = Api(one_worker.url)
    user = api.user()
    cursor = api.head(user)
    started = time.monotonic()
    polls = [gevent.spawn(api.poll, user, cursor, 1) for _ in range(30)]
    answers = [p.get(timeout=20) for p in polls]
    assert all(a.status_code == 200 for a in answers)
    assert time.monotonic() - started < 5


def test_metric_folders_of_killed_servers_are_removed_at_the_next_start(
    services: Any, tmp_path: Path
) -> None:
    # A master killed with -9 never runs on_exit: its metrics folder stayed in
    # memory (/dev/shm) for good, one more per killed server.
    first = start_gunicorn(services, tmp_path, workers=1)
    ours = f"messenger-metrics-{first.process.pid}-"
    parents = [Path("/dev/shm"), Path(tempfile.gettempdir())]
    [folder] = [f for p in parents if p.is_dir() for f in p.glob(ours + "*")]
    first.stop(signal.SIGKILL)
    for child in psutil.Process().children(recursive=True):  # its orphaned worker
        if child.status() != psutil.STATUS_ZOMBIE and "gunicorn" in " ".join(
            child.cmdline()
        ):
            child.kill()
    assert folder.is_dir()
    second = start_gunicorn(services, tmp_path, workers=1)
    try:
        assert not folder.exists()
        assert [
            f
            for p in parents
            if p.is_dir()
            for f in p.glob(f"messenger-metrics-{second.process.pid}-*")
        ]
    finally:
        second.stop()
