"""PostgreSQL crashes (an immediate shutdown: no checkpoint, crash recovery on
the next start) right after a fan-out; the event stream still never skips or
repeats (API.md: "across server restarts").

A dedicated server, not the session's: it holds the directory and every shard,
on two databases so that a conversation with members on both fans out through
the outbox (the path that committed asynchronously). The WAL writer is slowed
to its maximum so an asynchronous commit would still be unflushed at the crash.
"""

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests

from messenger.cli import cmd_migrate
from messenger.embedded import EmbeddedPostgres, free_port
from messenger.settings import load
from tests.conftest import TEST_SHARDS, Services
from tests.system.conftest import Api, HttpUser, Server, start_gunicorn

NEAR = range(0, 4)  # on database c1, with the directory
FAR = range(4, TEST_SHARDS)  # on database c2


@pytest.fixture(scope="module")
def crashable(services: Services, settings: Any) -> Iterator[tuple[Server, Api, Any]]:
    root = Path(tempfile.mkdtemp(prefix="messenger-crash-", dir="/var/tmp"))
    root.chmod(0o755)
    pg = EmbeddedPostgres(root / "pg", free_port(), databases=("c1", "c2"))
    pg.start()
    server = None
    try:
        conn = psycopg2.connect(pg.dsn("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            cur.execute("ALTER SYSTEM SET wal_writer_flush_after = 0")
            cur.execute("SELECT pg_reload_conf()")
        conn.close()
        env = {
            "MESSENGER_DIRECTORY_URL": pg.dsn("c1"),
            "MESSENGER_SHARD_MAP": f"0-3={pg.dsn('c1')};4-{TEST_SHARDS - 1}="
            f"{pg.dsn('c2')}",
            # Nor does it know the session's databases (its shard map is its own).
            "MESSENGER_DATABASES": "",
            "MESSENGER_DB_CONNECT_TIMEOUT_SECS": "1",
        }
        cmd_migrate(load(services.env(**env)))
        server = start_gunicorn(services, root, workers=1, **env)
        yield server, Api(server.url), pg
    finally:
        if server is not None:
            server.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def user_on(api: Api, shards: range) -> HttpUser:
    for _ in range(40):
        user = api.user()
        if user.id % TEST_SHARDS in shards:
            return user
    raise AssertionError(f"no user id landed on shards {shards}")


def retrying(call: Any, deadline_secs: float = 30) -> requests.Response:
    """A request repeated while the server recovers (503), within a deadline."""
    deadline = time.monotonic() + deadline_secs
    while True:
        try:
            r = call()
            if r.status_code != 503:
                return r  # type: ignore[no-any-return]
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "no answer after the restart"
        time.sleep(0.2)


def test_events_seen_before_a_crash_are_the_same_after_it(
    crashable: tuple[Server, Api, Any],
) -> None:
    _server, api, pg = crashable
    alice, bob = user_on(api, NEAR), user_on(api, NEAR)
    carol = user_on(api, FAR)
    # The conversation on c1 (with bob), a member on c2: the outbox path.
    for _ in range(40):
        r = requests.post(
            api.url + "/v1/conversations",
            headers=alice.headers,
            json={"kind": "group", "title": "crash", "member_ids": [bob.id, carol.id]},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        group = r.json()["conversation"]["id"]
        if group % TEST_SHARDS in NEAR:
            break
    assert group % TEST_SHARDS in NEAR
    other = api.direct(bob, user_on(api, NEAR))  # all on c1: fanned out inline
    start = api.head(bob)

    for i in range(3):
        assert api.send(alice, group, f"before {i}").status_code == 201
    seen = api.poll(bob, start).json()["events"]
    assert [e["message"]["body"] for e in seen if e["type"] == "message"][-3:] == [
        f"before {i}" for i in range(3)
    ]
    # The crash, right after the poll saw the fan-out.
    pid = pg.pid
    assert pid is not None
    pg._stop_server(pg.cluster_dir, immediate=True)  # SIGQUIT: pg_ctl -m immediate
    pg.start()

    # Something else reaches bob first after the restart.
    r = retrying(lambda: api.send(bob, other, "after the crash"))
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 30
    while True:
        r = retrying(lambda: api.poll(bob, start))
        again = r.json()["events"]
        if len(again) >= len(seen) + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert [(e["id"], e["type"], e.get("message")) for e in again[: len(seen)]] == [
        (e["id"], e["type"], e.get("message")) for e in seen
    ]
    bodies = [e["message"]["body"] for e in again if e["type"] == "message"]
    assert bodies.count("after the crash") == 1 and bodies[-1] == "after the crash"
