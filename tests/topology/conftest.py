"""The topology of `make cluster`, started once for the `topology` tests.

The session starts it exactly as `make cluster` does (`messenger cluster up
--detach`, in a folder of its own and on free ports) and stops it with
`messenger cluster down`, whatever happens. Tests reach its parts through the
state file: both hosts, nginx, the three PostgreSQL servers, the Redis nodes.
"""

from __future__ import annotations

import secrets
import signal
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
import redis as redis_lib
import requests
from redis.cluster import key_slot

from messenger.embedded import EmbeddedPostgres, free_port
from messenger.embedded.processes import read_or_create_password
from messenger.embedded.topology import SHARDS, TopologyState
from tests.conftest import require_program, unique_handle

ROOT = Path(__file__).resolve().parents[2]
# Limits for many test users from one address and fast senders; typing keeps
# its defaults (the rate-limit test needs them).
TEST_LIMITS = (
    "send=5000/10s,register=5000/1h,login=5000/1m,login_handle=5000/5m,"
    "conversation=5000/1m"
)
START_SECS = 240
# A held poll's timeout in these tests: any wake that is lost shows as a poll
# answering only at its timeout, later than the bounds asserted (at most 8 s).
POLL_SECS = 12


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.topology)


def _cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "messenger", "cluster", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=START_SECS,
        check=False,
    )


@dataclass
class Topology:
    state: TopologyState
    root: Path

    @property
    def url(self) -> str:
        return self.state.url

    def host(self, name: str) -> str:
        return self.state.hosts[name]

    def pg(self, index: int) -> EmbeddedPostgres:
        """PostgreSQL server pgN (1-3), to stop and start."""
        return EmbeddedPostgres(
            self.root / f"pg{index}",
            self.state.pg_ports[index - 1],
            databases=(f"m{index}",),
        )

    def redis_nodes(self) -> list[redis_lib.Redis]:
        password = read_or_create_password(self.root)  # the cluster's, see topology
        return [
            redis_lib.Redis("127.0.0.1", port, password=password, socket_timeout=5)
            for port in self.state.redis_ports
        ]

    def refresh(self) -> None:
        fresh = TopologyState.read(self.root)
        assert fresh is not None
        self.state = fresh


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    # nginx is the one program the wheels cannot stand in for.
    require_program("nginx", "nginx")
    root = Path(tempfile.mkdtemp(prefix="messenger-topology-")) / "cluster"
    started = _cluster(
        "up",
        "--detach",
        "--root",
        str(root),
        "--port",
        str(free_port()),
        "--set",
        f"MESSENGER_RATE_LIMITS={TEST_LIMITS}",
        "--set",
        "MESSENGER_LOG_LEVEL=WARNING",
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        state = TopologyState.read(root)
        assert state is not None and state.ready
        yield Topology(state, root)
    finally:
        stopped = _cluster("down", "--root", str(root))
        print(stopped.stdout, stopped.stderr)
        log = root.parent / "cluster.log"
        log.unlink(missing_ok=True)
        root.parent.rmdir()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not root.exists()


# ---- a tiny client --------------------------------------------------------------


@dataclass
class User:
    id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def server(self) -> int:
        """The PostgreSQL server (1 or 2) holding this user's shard."""
        return 1 if self.id % SHARDS < 8 else 2


# A client retries a 503 after its Retry-After, as API.md asks (a server that
# just came back: each worker's first use of a pooled connection may fail).
RETRIES_ON_503 = 5


def call(method: str, url: str, **kwargs: Any) -> requests.Response:
    """One request, retried (bounded) while it answers 503."""
    for _ in range(RETRIES_ON_503):
        r = requests.request(method, url, **kwargs)
        if r.status_code != 503:
            return r
        time.sleep(min(3.0, float(r.headers.get("Retry-After", "1"))))
    return r


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def user(self) -> User:
        body = {"handle": unique_handle("t"), "password": "password123"}
        r = call("POST", self.url + "/v1/users", json=body, timeout=10)
        assert r.status_code == 201, r.text
        r = call("POST", self.url + "/v1/sessions", json=body, timeout=10)
        assert r.status_code == 201, r.text
        return User(r.json()["user"]["id"], r.json()["token"])

    def group(self, owner: User, members: list[User]) -> int:
        r = call(
            "POST",
            self.url + "/v1/conversations",
            headers=owner.headers,
            json={
                "kind": "group",
                "title": "t",
                "member_ids": [m.id for m in members],
            },
            timeout=10,
        )
        assert r.status_code == 201, r.text
        return int(r.json()["conversation"]["id"])

    def send(
        self, user: User, conversation_id: int, body: str, client_msg_id: str = ""
    ) -> requests.Response:
        """A send, retried on 503 with the same client_msg_id (idempotent)."""
        return call(
            "POST",
            f"{self.url}/v1/conversations/{conversation_id}/messages",
            headers=user.headers,
            json={
                "client_msg_id": client_msg_id or secrets.token_hex(6),
                "body": body,
            },
            timeout=30,
        )

    def head(self, user: User) -> str:
        r = call("GET", self.url + "/v1/events", headers=user.headers, timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["cursor"])

    def poll(self, user: User, cursor: str, timeout: float) -> requests.Response:
        return requests.get(
            f"{self.url}/v1/events?after={cursor}&timeout={timeout}",
            headers=user.headers,
            timeout=timeout + 15,
        )


@dataclass
class Listener:
    """A client re-polling in a thread, as a browser would: every stored event
    it gets, with the time it arrived; errors (a host killed, 503) are retried
    with the same cursor."""

    api: Api
    user: User
    cursor: str
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Listener:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + 600  # a bound, far beyond any test
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                r = self.api.poll(self.user, self.cursor, timeout=POLL_SECS)
            except requests.RequestException:
                self.errors += 1
                time.sleep(0.2)
                continue
            if r.status_code != 200:
                self.errors += 1
                time.sleep(0.2)
                continue
            now = time.monotonic()
            body = r.json()
            self.events.extend((now, e) for e in body["events"])
            self.cursor = body["cursor"]

    def messages(self, conversation_id: int) -> list[dict[str, Any]]:
        return [
            e["message"]
            for _, e in self.events
            if e["type"] == "message"
            and e["message"]["conversation_id"] == conversation_id
        ]

    def arrival(self, conversation_id: int, seq: int) -> float | None:
        for at, e in self.events:
            if (
                e["type"] == "message"
                and e["message"]["conversation_id"] == conversation_id
                and e["message"]["seq"] == seq
            ):
                return at
        return None

    def finish(self) -> None:
        finish_all([self])


def finish_all(listeners: list[Listener]) -> None:
    """Stop every listener (all at once: each may be inside a held poll)."""
    for listener in listeners:
        listener.stop.set()
    for listener in listeners:
        if listener.thread is not None:
            listener.thread.join(timeout=POLL_SECS + 20)
            assert not listener.thread.is_alive()


def wait_for(
    condition: Callable[[], bool], timeout_secs: float, what: str, step: float = 0.1
) -> float:
    """Poll condition until true; the seconds it took. Fails after the bound."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_secs:
            raise AssertionError(f"not within {timeout_secs} s: {what}")
        time.sleep(step)
    return time.monotonic() - started


def assert_exactly_once(
    listener: Listener, conversation_id: int, seqs: list[int]
) -> None:
    """Each seq once, in order, and every stored event id once."""
    got = [m["seq"] for m in listener.messages(conversation_id)]
    assert got == sorted(seqs), (listener.user.id, got)
    ids = [e["id"] for _, e in listener.events if "id" in e]
    assert len(ids) == len(set(ids)) and ids == sorted(ids)


def processes_of_server(pid: int) -> list[psutil.Process]:
    """A PostgreSQL postmaster and its backends (to SIGSTOP them all)."""
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def signal_all(processes: list[psutil.Process], signum: signal.Signals) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            continue


def slot_of(key: str) -> int:
    return int(key_slot(key.encode()))


def report(name: str, **numbers: object) -> None:
    """A scenario's results, on the test's output (pytest -s / the CI log)."""
    details = ", ".join(f"{k}: {v}" for k, v in numbers.items())
    print(f"\nscenario {name}: {details}", flush=True)
