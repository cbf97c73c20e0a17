"""A dependency stops under a running gunicorn, then comes back.

The server's shards 4-7 live on a PostgreSQL server of their own, and it has a
Redis of its own, so both can be stopped without disturbing other tests. While a
shard database is down, requests that need it get 503 with Retry-After and all
others keep working; while Redis is down, everything degrades but answers. When
each returns, service recovers without a restart, and nothing acknowledged during
the outage is lost.
"""

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import requests

from messenger.cli import cmd_migrate
from messenger.embedded import EmbeddedPostgres, EmbeddedRedis, LocalServers, free_port
from messenger.settings import load
from tests.conftest import TEST_SHARDS, Services
from tests.system.conftest import (
    Api,
    HttpUser,
    Server,
    group_on,
    start_gunicorn,
    user_on,
)

DOWN_SHARDS = range(4, TEST_SHARDS)  # on the second server


@dataclass
class Stack:
    server: Server
    api: Api
    pg: EmbeddedPostgres
    redis: EmbeddedRedis


@pytest.fixture(scope="module")
def stack(
    services: Services, settings: Any, in_process_sweeper_paused: None
) -> Iterator[Stack]:
    # Inside the session's folder: removed with it, and stopped by the next run
    # if this one is killed outright.
    servers = LocalServers(
        services.root / "outage",
        pg_port=free_port(),
        redis_port=free_port(),
        databases=("m3",),
        persistent=False,
    )
    with servers:
        pg, rds = servers.pg, servers.redis
        # Its own directory: the session's says shards 4.. live in m2.
        services.pg.create_database("outages")
        env = {
            "MESSENGER_SHARD_MAP": f"0-3={services.pg.dsn('outages')};"
            f"4-{TEST_SHARDS - 1}={pg.dsn('m3')}",
            "MESSENGER_DIRECTORY_URL": services.pg.dsn("outages"),
            # Nor does it know the session's databases (m1 holds shards 0-3 too).
            "MESSENGER_DATABASES": "",
            "MESSENGER_REDIS_URL": rds.url,
            "MESSENGER_RATE_LIMITS": "on",  # the limiter must not fail with Redis
            "MESSENGER_DB_CONNECT_TIMEOUT_SECS": "1",
        }
        assert cmd_migrate(load(services.env(**env))) == 0
        server = start_gunicorn(services, servers.root, workers=2, **env)
        try:
            yield Stack(server, Api(server.url), pg, rds)
        finally:
            server.stop()


def get(api: Api, user: HttpUser, path: str) -> requests.Response:
    return requests.get(api.url + path, headers=user.headers, timeout=10)


def assert_unavailable(r: requests.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "unavailable"
    assert int(r.headers["Retry-After"]) >= 1


def events_of(api: Api, user: HttpUser, cursor: str) -> list[dict[str, Any]]:
    r = api.poll(user, cursor)
    assert r.status_code == 200, r.text
    return r.json()["events"]  # type: ignore[no-any-return]


def test_a_stopped_shard_database_fails_only_what_needs_it(stack: Stack) -> None:
    api = stack.api
    up, up2 = user_on(api, range(4)), user_on(api, range(4))
    down = user_on(api, DOWN_SHARDS)
    healthy = group_on(api, up, [up2], range(4))
    shared = group_on(api, up, [down], range(4))
    cursors = {u.id: api.head(u) for u in (up, up2, down)}

    stack.pg.stop()
    try:
        # What needs the stopped server: 503 with Retry-After, quickly.
        started = time.monotonic()
        assert_unavailable(
            get(api, down, f"/v1/events?after={cursors[down.id]}&timeout=0")
        )
        assert_unavailable(get(api, down, "/v1/conversations"))
        assert time.monotonic() - started < 5
        # The host still serves (the directory and Redis answer): /readyz
        # stays 200 and names the database down; the strict check fails.
        ready = requests.get(api.url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded"
        assert [d["status"] for d in ready.json()["databases"]] == ["up", "down"]
        strict = requests.get(api.url + "/readyz/strict", timeout=10)
        assert strict.status_code == 503 and "database" in strict.text
        # Everything else keeps working.
        assert api.send(up, healthy, "still here").status_code == 201
        assert [e["message"]["body"] for e in events_of(api, up2, cursors[up2.id])] == [
            "still here"
        ]
        r = get(api, up, "/v1/conversations")
        assert r.status_code == 200, r.text
        # A message to a member on the stopped server is durable: 201 now,
        # delivered when the server is back.
        assert api.send(up, shared, "for later").status_code == 201
    finally:
        stack.pg.start()

    # Back without restarting gunicorn: broken pooled connections are replaced.
    # The group's own events to `down` ran behind the creation's answer and
    # may come first; the message follows them.
    bodies: list[str] = []
    cursor = cursors[down.id]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not bodies:
        r = get(api, down, f"/v1/events?after={cursor}&timeout=0")
        if r.status_code == 200:
            cursor = r.json()["cursor"]
            bodies += [
                e["message"]["body"]
                for e in r.json()["events"]
                if e["type"] == "message"
            ]
        if not bodies:
            time.sleep(0.5)
    assert r.status_code == 200, r.text
    assert bodies == ["for later"]  # the sweeper finished the fan-out
    assert get(api, down, "/v1/conversations").status_code == 200
    assert requests.get(api.url + "/readyz/strict", timeout=10).status_code == 200


# A send that waits on nothing but its own transaction answers in milliseconds;
# one that waits on the hung server's part of its fan-out takes a second or more
# (a connect timeout, or the fan-out's own bound). Generous for a loaded machine.
SEND_SECS_MAX = 0.5


def signal_server(pg: EmbeddedPostgres, signum: signal.Signals) -> None:
    """Send a signal to a PostgreSQL server: its postmaster and every backend."""
    pid = pg.pid
    assert pid is not None
    postmaster = psutil.Process(pid)
    for process in [postmaster, *postmaster.children(recursive=True)]:
        try:
            process.send_signal(signum)
        except psutil.NoSuchProcess:
            continue


def messages_until(
    api: Api, user: HttpUser, cursor: str, count: int, timeout_secs: float
) -> tuple[list[dict[str, Any]], str]:
    """Stored events from consecutive polls, until `count` messages came or the
    bound passed; the events and the last cursor."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        r = api.poll(user, cursor, timeout=1)
        if r.status_code == 200:
            events += [e for e in r.json()["events"] if "id" in e]
            cursor = r.json()["cursor"]
            if len([e for e in events if e["type"] == "message"]) >= count:
                break
        else:
            time.sleep(0.5)  # 503 while the server comes back
    return events, cursor


def test_a_send_answers_without_waiting_on_a_hung_members_database(
    stack: Stack,
) -> None:
    """A SIGSTOPped server accepts connections and never answers (a hung or
    black-holed host). A send to a conversation on another server answers once
    its own transaction commits; the members beside the conversation have it by
    then, the sender's own stream included; the member on the hung server gets
    every message once it is back: each once, in seq order."""
    api = stack.api
    sender, near = user_on(api, range(4)), user_on(api, range(4))
    far = user_on(api, DOWN_SHARDS)
    cid = group_on(api, sender, [near, far], range(4))
    cursors = {u.id: api.head(u) for u in (sender, near, far)}
    # A send while all is well: the workers' pools hold connections to the
    # server, which hang in a query once it stops (no quick connect failure).
    assert api.send(sender, cid, "before").status_code == 201
    bodies = ["before"] + [f"hung {n}" for n in range(5)]

    signal_server(stack.pg, signal.SIGSTOP)
    try:
        send_secs = []
        seqs = []
        for body in bodies[1:]:
            started = time.monotonic()
            r = api.send(sender, cid, body)
            send_secs.append(round(time.monotonic() - started, 3))
            assert r.status_code == 201, r.text
            seqs.append(r.json()["message"]["seq"])
        for user in (sender, near):
            got = events_of(api, user, cursors[user.id])
            assert [
                e["message"]["body"] for e in got if e["type"] == "message"
            ] == bodies
    finally:
        signal_server(stack.pg, signal.SIGCONT)
    print(f"\nsends with pg stopped (SIGSTOP): {send_secs} s")
    assert max(send_secs) < SEND_SECS_MAX, send_secs
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

    events, cursor = messages_until(api, far, cursors[far.id], len(bodies), 40)
    messages = [e["message"] for e in events if e["type"] == "message"]
    assert [m["body"] for m in messages] == bodies
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids))
    # A replay of a fan-out cut off by the stop (the sweeper's) adds nothing.
    time.sleep(2)
    later = [e for e in events_of(api, far, cursor) if e["type"] == "message"]
    assert later == []


def test_a_stopped_redis_degrades_and_recovers(stack: Stack) -> None:
    api = stack.api
    alice, bob = api.user(), api.user()
    cid = api.direct(alice, bob)
    cursor = api.head(bob)

    stack.redis.stop()
    try:
        # Logins, sends (the rate limiter can't count: it lets them through) and
        # polls all answer; a held poll re-reads the database instead of waiting
        # for a wake-up.
        carol = api.user()
        assert get(api, carol, "/v1/users/me").status_code == 200
        for n in range(3):
            assert api.send(alice, cid, f"while down {n}").status_code == 201
        r = api.poll(bob, cursor, timeout=3)
        assert r.status_code == 200
        assert [e["message"]["body"] for e in r.json()["events"]][:1] == [
            "while down 0"
        ]
        ready = requests.get(api.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and "redis" in ready.text
    finally:
        stack.redis.start()

    # Back: wake-ups flow again, so a held poll answers soon after a send.
    cursor = api.head(bob)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if requests.get(api.url + "/readyz", timeout=10).status_code == 200:
            break
        time.sleep(0.5)
    time.sleep(1)  # the dispatchers reconnect with a short backoff

    def send_soon() -> None:
        time.sleep(0.5)
        api.send(alice, cid, "after")

    sender = threading.Thread(target=send_soon)
    started = time.monotonic()
    sender.start()
    r = api.poll(bob, cursor, timeout=20)
    sender.join()
    assert r.status_code == 200
    assert [e["message"]["body"] for e in r.json()["events"]] == ["after"]
    assert time.monotonic() - started < 5
