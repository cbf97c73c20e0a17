"""`messenger run` brings back each child killed with -9, under load, losing nothing.

One `messenger run` on a fresh data folder under /var/tmp (its own embedded
PostgreSQL and Redis on free ports). A few users send and poll over HTTP on
loopback while the PostgreSQL postmaster, then Redis, then the push worker are
killed with SIGKILL; each must come back by itself and /readyz answer 200 again.
At the end every acknowledged message (201/200) must be in every member's event
stream exactly once, in seq order, with no gap.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from messenger.embedded import EmbeddedPostgres, LocalServers, free_port
from tests.conftest import unique_handle
from tests.system.conftest import HttpUser

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECS = 120.0
RECOVERY_TIMEOUT_SECS = 60.0
# One message every SEND_INTERVAL_SECS, at most MAX_SENDS: a steady, bounded load.
SEND_INTERVAL_SECS = 0.1
MAX_SENDS = 2000
# Polls by the pollers are short so they keep asking during outages.
POLL_TIMEOUT_SECS = 1


@dataclass
class Run:
    url: str
    process: subprocess.Popen  # type: ignore[type-arg]
    data_dir: Path
    pg_port: int
    redis_port: int
    log_path: Path
    env: dict[str, str]
    expected_exit_code: int = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def postgres_pid(self) -> int | None:
        return EmbeddedPostgres(self.data_dir / "postgres", self.pg_port).pid

    def redis_pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "redis" / "redis.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def push_worker_pid(self) -> int | None:
        for child in psutil.Process(self.process.pid).children():
            try:
                if (
                    "push-worker" in child.cmdline()
                    and child.status() != psutil.STATUS_ZOMBIE
                ):
                    return int(child.pid)
            except psutil.Error:
                continue
        return None

    def is_ready(self) -> bool:
        try:
            return requests.get(self.url + "/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False


@pytest.fixture
def run() -> Iterator[Run]:
    data_dir = Path(tempfile.mkdtemp(prefix="messenger-sup-", dir="/var/tmp"))
    data_dir.chmod(0o755)
    port, pg_port, redis_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
    env.update(
        MESSENGER_DATA_DIR=str(data_dir),
        MESSENGER_PORT=str(port),
        MESSENGER_EMBEDDED_PG_PORT=str(pg_port),
        MESSENGER_EMBEDDED_REDIS_PORT=str(redis_port),
        MESSENGER_RATE_LIMITS="off",
        MESSENGER_SHARDS="8",
        MESSENGER_WORKERS="2",
        MESSENGER_DB_CONNECT_TIMEOUT_SECS="1",
        MESSENGER_SWEEPER_INTERVAL_SECS="0.5",
        MESSENGER_LOG_LEVEL="WARNING",
    )
    log_path = data_dir / "run.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "messenger", "run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    state = Run(
        f"http://127.0.0.1:{port}",
        process,
        data_dir,
        pg_port,
        redis_port,
        log_path,
        env,
    )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while not state.is_ready():
            assert process.poll() is None, f"messenger run exited:\n{state.log()}"
            assert time.monotonic() < deadline, f"not ready:\n{state.log()}"
            time.sleep(0.2)
        yield state
        seen |= _pids(state)
    finally:
        seen |= _pids(state)
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        left = sorted(pid for pid in seen if _is_alive(pid))
        # Whatever happened, nothing stays running and the folder goes.
        LocalServers(
            data_dir, pg_port=pg_port, redis_port=redis_port, remove_on_stop=True
        ).stop()
    assert code == state.expected_exit_code, f"messenger run exited with {code}"
    assert not left, f"processes left after SIGTERM: {left}"


def _pids(state: Run) -> set[int]:
    pids = {state.postgres_pid(), state.redis_pid()}
    if state.process.poll() is None:
        pids |= {c.pid for c in psutil.Process(state.process.pid).children(True)}
    return {pid for pid in pids if pid}


def _is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _user(url: str) -> HttpUser:
    body = {"handle": unique_handle("sup"), "password": "password123"}
    assert requests.post(url + "/v1/users", json=body, timeout=10).status_code == 201
    r = requests.post(url + "/v1/sessions", json=body, timeout=10)
    assert r.status_code == 201, r.text
    return HttpUser(r.json()["user"]["id"], r.json()["token"])


@dataclass
class Load:
    """Senders and pollers over HTTP; records what the server acknowledged."""

    url: str
    users: list[HttpUser]
    conversations: dict[int, list[HttpUser]]
    acked: dict[int, dict[int, str]] = field(default_factory=dict)
    retries: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def send_until_acked(self, sender: HttpUser, conversation_id: int, n: int) -> None:
        client_msg_id = f"m{n}-{os.urandom(4).hex()}"
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECS * 2
        while time.monotonic() < deadline:
            try:
                r = requests.post(
                    f"{self.url}/v1/conversations/{conversation_id}/messages",
                    headers=sender.headers,
                    json={"client_msg_id": client_msg_id, "body": f"message {n}"},
                    timeout=10,
                )
            except requests.RequestException:
                r = None
            if r is not None and r.status_code in (200, 201):
                seq = int(r.json()["message"]["seq"])
                known = self.acked.setdefault(conversation_id, {})
                if known.get(seq, client_msg_id) != client_msg_id:
                    self.errors.append(f"seq {seq} acknowledged for two messages")
                known[seq] = client_msg_id
                return
            if r is not None and r.status_code not in (500, 502, 503):
                self.errors.append(f"send answered {r.status_code}: {r.text[:200]}")
                return
            self.retries += 1  # an outage: retry the same client_msg_id
            time.sleep(0.2)
        self.errors.append(f"message {n} was never acknowledged")

    def send_loop(self) -> None:
        conv_ids = sorted(self.conversations)
        for n in range(MAX_SENDS):
            if self.stop.is_set():
                return
            conversation_id = conv_ids[n % len(conv_ids)]
            members = self.conversations[conversation_id]
            self.send_until_acked(members[n % len(members)], conversation_id, n)
            time.sleep(SEND_INTERVAL_SECS)

    def poll_loop(self, user: HttpUser, cursor: str) -> None:
        session = requests.Session()
        for _ in range(10_000):
            if self.stop.is_set():
                return
            try:
                r = session.get(
                    f"{self.url}/v1/events?after={cursor}&timeout={POLL_TIMEOUT_SECS}",
                    headers=user.headers,
                    timeout=POLL_TIMEOUT_SECS + 10,
                )
                if r.status_code == 200:
                    cursor = r.json()["cursor"]
                    continue
            except requests.RequestException:
                pass
            time.sleep(0.2)


def _drain(url: str, user: HttpUser, cursor: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for _ in range(200):
        r = requests.get(
            f"{url}/v1/events?after={cursor}&limit=500&timeout=0",
            headers=user.headers,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        page = r.json()
        events.extend(e for e in page["events"] if "id" in e)
        cursor = page["cursor"]
        if not page["more"]:
            return events
    raise AssertionError("the event stream did not end")


def _wait_recovered(run: Run, old_pid: int, pid_of: Callable[[], int | None]) -> float:
    """Seconds from now until a new process runs and /readyz is 200."""
    started = time.monotonic()
    deadline = started + RECOVERY_TIMEOUT_SECS
    while True:
        pid = pid_of()
        if pid is not None and pid != old_pid and run.is_ready():
            return time.monotonic() - started
        assert run.process.poll() is None, f"messenger run exited:\n{run.log()}"
        assert time.monotonic() < deadline, f"no recovery:\n{run.log()}"
        time.sleep(0.05)


def test_doctor_checks_the_embedded_servers_of_messenger_run(run: Run) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "messenger", "doctor"],
        cwd=ROOT,
        env=run.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checking `messenger run`'s embedded servers" in result.stdout
    assert f"OK    database 127.0.0.1:{run.pg_port}/messenger" in result.stdout
    assert f"OK    redis 127.0.0.1:{run.redis_port}/0" in result.stdout


def test_each_child_killed_comes_back_and_nothing_acknowledged_is_lost(
    run: Run,
) -> None:
    a, b, c = (_user(run.url) for _ in range(3))
    r = requests.post(
        run.url + "/v1/conversations",
        headers=a.headers,
        json={"kind": "group", "title": "sup", "member_ids": [b.id, c.id]},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    group_id = int(r.json()["conversation"]["id"])
    r = requests.post(
        run.url + "/v1/conversations",
        headers=a.headers,
        json={"kind": "direct", "user_id": b.id},
        timeout=10,
    )
    assert r.status_code in (200, 201), r.text
    direct_id = int(r.json()["conversation"]["id"])
    heads = {}
    for user in (a, b, c):
        r = requests.get(run.url + "/v1/events", headers=user.headers, timeout=10)
        heads[user.id] = r.json()["cursor"]
    load = Load(run.url, [a, b, c], {group_id: [a, b, c], direct_id: [a, b]})
    threads = [threading.Thread(target=load.send_loop)] + [
        threading.Thread(target=load.poll_loop, args=(u, heads[u.id]))
        for u in (a, b, c)
    ]
    for thread in threads:
        thread.start()
    recovery: dict[str, float] = {}
    try:
        time.sleep(2)
        for name, pid_of in (
            ("PostgreSQL", run.postgres_pid),
            ("Redis", run.redis_pid),
            ("push worker", run.push_worker_pid),
        ):
            old_pid = pid_of()
            assert old_pid is not None, f"no {name} running:\n{run.log()}"
            os.kill(old_pid, signal.SIGKILL)
            recovery[name] = _wait_recovered(run, old_pid, pid_of)
            time.sleep(2)  # load on the recovered service
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=RECOVERY_TIMEOUT_SECS * 2 + 15)
    print()
    for name, secs in recovery.items():
        print(f"recovery after kill -9 of {name}: {secs:.2f} s")
    print(f"sends retried during outages: {load.retries}")
    assert not load.errors, load.errors[:5]
    log = run.log_path.read_text(errors="replace")
    for name in recovery:
        assert f"supervisor: {name} is back" in log, log
    total = sum(len(seqs) for seqs in load.acked.values())
    assert total >= 20, f"too few messages acknowledged ({total})"
    # Fan-outs deferred by an outage are finished by the sweeper: wait (bounded).
    deadline = time.monotonic() + 20
    while True:
        problems = [
            problem
            for user in (a, b, c)
            for problem in _delivery_problems(load, user, heads[user.id])
        ]
        if not problems or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    assert not problems, problems[:10]


def _delivery_problems(load: Load, user: HttpUser, head: str) -> list[str]:
    """What is wrong with one member's stream: [] when every acknowledged message
    is there exactly once, in seq order, with no gap."""
    events = _drain(load.url, user, head)
    ids = [e["id"] for e in events]
    problems = [] if len(ids) == len(set(ids)) else [f"{user}: repeated event ids"]
    for conversation_id, members in load.conversations.items():
        if user not in members:
            continue
        messages = [
            e["message"]
            for e in events
            if e["type"] == "message"
            and e["message"]["conversation_id"] == conversation_id
        ]
        seqs = [m["seq"] for m in messages]
        if seqs != list(range(1, len(seqs) + 1)):
            problems.append(f"{user} in {conversation_id}: seqs {seqs}")
        by_seq = {m["seq"]: m["client_msg_id"] for m in messages}
        for seq, client_msg_id in load.acked.get(conversation_id, {}).items():
            if by_seq.get(seq) != client_msg_id:
                problems.append(f"{user} in {conversation_id}: seq {seq} missing")
    return problems


def test_gives_up_loudly_when_a_child_cannot_come_back(run: Run) -> None:
    """Redis's port taken by another program: five failed restarts within the
    window, then `messenger run` says so, stops everything and exits 1."""
    run.expected_exit_code = 1
    redis_pid = run.redis_pid()
    assert redis_pid is not None
    postgres_pid = run.postgres_pid()
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Connections to the dead Redis linger in TIME_WAIT on its port.
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        os.kill(redis_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while True:  # take the port the moment Redis lets go of it
            try:
                squatter.bind(("127.0.0.1", run.redis_port))
                break
            except OSError:
                assert time.monotonic() < deadline, "Redis kept its port"
                time.sleep(0.01)
        squatter.listen()
        # Backoffs 0.5 + 1 + 2 + 4 s before the fifth failure.
        code = run.process.wait(timeout=RECOVERY_TIMEOUT_SECS)
    finally:
        squatter.close()
    log = run.log_path.read_text(errors="replace")
    assert code == 1, log[-3000:]
    assert "Redis failed 5 times within 60 s" in log, log[-3000:]
    assert "giving up and stopping everything: read its log (" in log
    assert "redis.log), fix the cause and start again." in log
    assert "stopped the embedded PostgreSQL and Redis" in log
    assert postgres_pid is not None and not _is_alive(postgres_pid)
