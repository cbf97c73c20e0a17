"""The real server: gunicorn with gevent workers, waking across workers, crashes,
Redis outages and graceful shutdown."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import gevent
import redis as redis_lib

from tests.system.conftest import ROOT, Api, Server, start_gunicorn


def _held_workers(redis: redis_lib.Redis, user_id: int) -> set[bytes]:
    return set(redis.zrangebyscore(f"conn:{user_id}", time.time(), "+inf"))


def test_poll_on_one_worker_is_woken_by_send_on_another(api: Api, redis: Any) -> None:
    alice, bob = api.user(), api.user()
    cid = api.direct(alice, bob)
    cursor = api.head(bob)
    cursor = api.poll(bob, cursor).json()["cursor"]
    # Open polls on fresh connections until both workers hold some of bob's.
    polls = []
    deadline = time.monotonic() + 15
    while len(_held_workers(redis, bob.id)) < 2:
        assert time.monotonic() < deadline, "polls never spread over 2 workers"
        assert len(polls) < 8, "kernel kept every connection on one worker"
        polls.append(gevent.spawn(api.poll, bob, cursor, 30))
        gevent.sleep(0.3)
    started = time.monotonic()
    assert api.send(alice, cid, "across workers").status_code == 201
    answers = [p.get(timeout=5) for p in polls]
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    for answer in answers:
        assert answer.status_code == 200
        bodies = [
            e["message"]["body"]
            for e in answer.json()["events"]
            if e["type"] == "message"
        ]
        assert bodies == ["across workers"]


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
        rt = runtime.build(load())
        with rt.router.on_conversation({cid}, "send_message",
                                       transaction=False) as cur:
            message, recipients, _ = messages.begin_send(
                cur, {cid}, {alice.id}, "crash-1", "survivor")
            messages.queue_and_commit(cur, message, recipients)
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


def test_sigterm_answers_held_polls(
    services: Any, settings: Any, tmp_path: Path
) -> None:
    srv = start_gunicorn(services, tmp_path, workers=1)
    try:
        api = Api(srv.url)
        user = api.user()
        cursor = api.head(user)
        polls = [gevent.spawn(api.poll, user, cursor, 50) for _ in range(3)]
        gevent.sleep(1.0)
        started = time.monotonic()
        srv.process.send_signal(signal.SIGTERM)
        answers = [p.get(timeout=15) for p in polls]
        assert time.monotonic() - started < 5
        for answer in answers:
            assert answer.status_code == 200
            assert answer.json() == {"events": [], "cursor": cursor, "more": False}
        assert srv.process.wait(timeout=30) == 0
    finally:
        srv.stop(signal.SIGKILL)


def test_one_gevent_worker_holds_many_polls_at_once(
    services: Any, settings: Any, tmp_path: Path
) -> None:
    """A sync worker would answer 30 one-second polls one after another."""
    srv = start_gunicorn(services, tmp_path, workers=1)
    try:
        api = Api(srv.url)
        user = api.user()
        cursor = api.head(user)
        started = time.monotonic()
        polls = [gevent.spawn(api.poll, user, cursor, 1) for _ in range(30)]
        answers = [p.get(timeout=20) for p in polls]
        assert all(a.status_code == 200 for a in answers)
        assert time.monotonic() - started < 5
    finally:
        srv.stop()
