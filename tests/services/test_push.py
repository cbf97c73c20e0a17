"""Pushes to offline members: queueing at fan-out, coalescing, signed webhook
delivery, retries, dead letters, removed devices and crashed workers.

A real HTTP receiver listens on 127.0.0.1; most tests drive the worker one step
at a time (promote, process_one), a few run its loops or its process."""

import dataclasses
import hashlib
import hmac
import http
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import pytest
from gevent.pywsgi import WSGIServer

from messenger import runtime
from messenger.embedded import free_port
from messenger.models import Message
from messenger.realtime import keys
from messenger.services import presence, push
from messenger.services.push_providers import SIGNATURE_HEADER, sign, verify
from messenger.storage.events import OutboxRow
from messenger.workers.push_queue import Job
from messenger.workers.push_queue import retry_delay_secs as backoff_secs
from messenger.workers.pusher import Pusher
from tests import conftest
from tests.conftest import Services

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 recording every request. It answers `status`
    (or the next of `statuses`), can stall until released, and can be down."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Received] = []
        self.status = 200
        self.statuses: list[int] = []
        # Answers by path, each list in turn, before `statuses`: a job's devices
        # are tried at once, so the order their requests arrive in is not fixed.
        self.statuses_by_path: dict[str, list[int]] = {}
        self.stall = False
        self.released = gevent.event.Event()
        self.server: WSGIServer | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        self.server = WSGIServer(
            ("127.0.0.1", self.port), self._app, log=None, error_log=None
        )
        self.server.start()

    def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        headers = {
            k[5:].replace("_", "-").title(): v
            for k, v in environ.items()
            if k.startswith("HTTP_")
        }
        headers["Content-Type"] = environ.get("CONTENT_TYPE", "")
        self.requests.append(
            Received(
                environ["PATH_INFO"],
                headers,
                environ["wsgi.input"].read(length),
                time.monotonic(),
            )
        )
        if self.stall:
            self.released.wait(30)
        for_path = self.statuses_by_path.get(environ["PATH_INFO"])
        if for_path:
            status = for_path.pop(0)
        else:
            status = self.statuses.pop(0) if self.statuses else self.status
        start_response(f"{status} {http.HTTPStatus(status).phrase}", [])
        return [b"ok"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def push_settings(override_settings: Any, redis: Any) -> Any:
    """Change the running app's settings for one test; the queue starts empty
    (the `redis` fixture flushes it)."""
    return override_settings


@pytest.fixture
def make_pusher(push_settings: Any) -> Iterator[Any]:
    made: list[Pusher] = []

    def make(**kwargs: Any) -> Pusher:
        pusher = Pusher(runtime.get(), **kwargs)
        made.append(pusher)
        return pusher

    yield make
    for pusher in made:
        pusher.stop()
        pusher.shut_down()


def add_device(client: Any, user: Any, url: str) -> dict[str, Any]:
    r = client.post(
        "/v1/devices", headers=user.headers, json={"kind": "webhook", "url": url}
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()["device"]  # type: ignore[no-any-return]


def run_due(pusher: Pusher, ahead_secs: float = 3600) -> int:
    """Promote everything (as if time had passed) and deliver it; returns jobs."""
    pusher.promote(now=time.time() + ahead_secs)
    done = 0
    while pusher.process_one():
        done += 1
    return done


def queue_is_empty(redis: Any) -> bool:
    return not any(
        (
            redis.zcard(keys.PUSH_DUE),
            redis.zcard(keys.PUSH_RETRY),
            redis.llen(keys.PUSH_QUEUE),
            list(redis.scan_iter(match="{push}:pending:*")),
            list(redis.scan_iter(match="{push}:processing:*")),
        )
    )


def wait_for(condition: Any, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.02)


# ---- who gets a push ----------------------------------------------------------------


def test_offline_member_gets_one_signed_push(
    client: Any, make_user: Any, chat: Any, receiver: Receiver, make_pusher: Any
) -> None:
    alice, bob = make_user(), make_user()
    bob_device = add_device(client, bob, receiver.url("/bob"))
    add_device(client, alice, receiver.url("/alice"))  # the sender: no push
    cid = chat.direct(alice, bob)
    sent = chat.send(alice, cid, "hello Bob")

    assert run_due(make_pusher()) == 1
    assert receiver.to("/alice") == []
    [got] = receiver.to("/bob")
    assert got.headers["Content-Type"] == "application/json"
    signature = got.headers[SIGNATURE_HEADER]
    assert verify(bob_device["secret"], got.body, signature)
    timestamp = int(signature.split(",")[0].removeprefix("t="))
    assert abs(time.time() - timestamp) < 60
    assert signature == sign(bob_device["secret"], got.body, timestamp)
    assert got.json == {
        "type": "messages",
        "user_id": bob.id,
        "conversation_id": cid,
        "sender_id": alice.id,
        "count": 1,
        "messages": [sent],
    }
    # Altered bodies and other secrets do not verify.
    assert not verify(bob_device["secret"], got.body + b" ", signature)
    assert not verify("another secret", got.body, signature)


def test_online_member_gets_no_push(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    redis: Any,
) -> None:
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url("/bob"))
    cid = chat.direct(alice, bob)
    chat.head(bob)  # a poll answered just now: online for 30 s
    wait_for_presence()
    assert push.is_online([alice.id, bob.id]) == {bob.id}
    chat.send(alice, cid, "you're here")
    assert redis.zcard(keys.PUSH_DUE) == 0
    assert run_due(make_pusher()) == 0
    assert receiver.requests == []


def test_a_muted_conversation_gets_no_push(
    client: Any, make_user: Any, chat: Any, receiver: Receiver, make_pusher: Any
) -> None:
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url("/bob"))
    quiet, loud = chat.direct(alice, bob), chat.group(alice, [bob])
    mute(client, bob, quiet, "forever")
    chat.send(alice, quiet, "muted")
    chat.send(alice, loud, "heard")
    run_due(make_pusher())
    assert [got.json["conversation_id"] for got in receiver.to("/bob")] == [loud]
    # Unmuted, pushes come back.
    mute(client, bob, quiet, None)
    chat.send(alice, quiet, "heard again")
    run_due(make_pusher())
    assert [got.json["conversation_id"] for got in receiver.to("/bob")] == [
        loud,
        quiet,
    ]


def test_muting_before_the_push_goes_out_stops_it(
    client: Any, make_user: Any, chat: Any, receiver: Receiver, make_pusher: Any
) -> None:
    # Muted within the coalescing window after the message: the member asked
    # for quiet before anything was pushed.
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url("/bob"))
    cid = chat.direct(alice, bob)
    chat.send(alice, cid, "sent before the mute")
    mute(client, bob, cid, "forever")
    assert run_due(make_pusher()) == 1
    assert receiver.to("/bob") == []


def test_the_blocker_gets_no_push_for_the_blocked_users_messages(
    client: Any, make_user: Any, chat: Any, receiver: Receiver, make_pusher: Any
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    add_device(client, alice, receiver.url("/alice"))
    group = chat.group(carol, [alice, bob])
    assert client.put(f"/v1/blocks/{bob.id}", headers=alice.headers).status_code == 204
    chat.send(bob, group, "from bob")
    sent = chat.send(carol, group, "from carol")
    run_due(make_pusher())
    [got] = receiver.to("/alice")
    assert got.json["messages"] == [sent]
    assert got.json["count"] == 1 and got.json["sender_id"] == carol.id
    # Only the blocked sender's messages: no push at all.
    chat.send(bob, group, "from bob again")
    run_due(make_pusher())
    assert len(receiver.to("/alice")) == 1


def test_pushes_are_queued_while_the_databases_are_down(
    client: Any, make_user: Any, chat: Any, receiver: Receiver, make_pusher: Any
) -> None:
    # Queueing read the members' mute and block settings on their shards: a
    # message committed just before PostgreSQL went away lost its push. Now the
    # queue needs Redis only, and delivery waits for the shard.
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url("/bob"))
    cid = chat.direct(alice, bob)
    sent = chat.send(alice, cid, "stored before the outage")
    pusher = make_pusher()
    run_due(pusher)
    assert len(receiver.to("/bob")) == 1  # the send's own push
    message = Message(
        cid,
        sent["seq"],
        alice.id,
        sent["client_msg_id"],
        sent["body"],
        datetime.fromisoformat(sent["created_at"]),
    )
    pools = runtime.get().router.pools.values()
    for pool in pools:
        for _ in range(6):
            pool.breaker.failed()  # every database fails fast for a few seconds
    try:
        queued = push.enqueue(
            [OutboxRow(0, cid, "message", (bob.id,), {}, message.created_at, message)]
        )
    finally:
        for pool in pools:
            pool.breaker.succeeded()
    assert queued == 1
    run_due(pusher)
    assert [got.json["messages"] for got in receiver.to("/bob")] == [[sent], [sent]]


def mute(client: Any, user: Any, cid: int, until: str | None) -> None:
    r = client.patch(
        f"/v1/conversations/{cid}/me",
        headers=user.headers,
        json={"muted_until": until},
    )
    assert r.status_code == 200, r.get_json()


def test_member_with_a_held_poll_is_online(
    client: Any, make_user: Any, chat: Any, redis: Any, push_settings: Any
) -> None:
    alice, bob = make_user(), make_user()
    add_device(client, bob, "http://127.0.0.1:9/bob")
    cid = chat.direct(alice, bob)
    hub = runtime.get().hub
    cursor = chat.drain(bob, "0")[1]  # skip the conversation's own events
    poll = gevent.spawn(chat.poll, bob, cursor, 10)
    wait_for(lambda: hub.is_holding(bob.id), what="the held poll")
    assert push.is_online([alice.id, bob.id]) == {bob.id}
    chat.send(alice, cid, "wake up")
    poll.get(timeout=10)
    assert redis.zcard(keys.PUSH_DUE) == 0
    # Answered less than the grace window ago: online, though no longer held.
    wait_for_presence()
    assert not hub.is_holding(bob.id)
    assert push.is_online([bob.id]) == {bob.id}
    # Last seen longer ago than the window: offline, and pushed to again.
    redis.set(keys.presence_seen(bob.id), repr(time.time() - 31))
    assert push.is_online([bob.id]) == set()
    chat.send(alice, cid, "gone now?")
    assert redis.zcard(keys.PUSH_DUE) == 1


def wait_for_presence() -> None:
    """Until this worker's presence notes are written to Redis."""
    tracker = presence.tracker()
    if tracker is not None:
        wait_for(tracker.is_idle, what="presence notes")


def test_members_without_devices_queue_nothing(
    make_user: Any, chat: Any, redis: Any, push_settings: Any
) -> None:
    alice, bob = make_user(), make_user()
    chat.send(alice, chat.direct(alice, bob), "nobody's listening")
    assert queue_is_empty(redis)


def test_group_push_names_the_newest_sender(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    for user in (alice, bob, carol):
        add_device(client, user, receiver.url(f"/{user.handle}"))
    cid = chat.group(alice, [bob, carol])
    first = chat.send(alice, cid, "from alice")
    second = chat.send(bob, cid, "from bob")
    assert run_due(make_pusher()) == 3
    [to_carol] = receiver.to(f"/{carol.handle}")
    assert to_carol.json["sender_id"] == bob.id
    assert to_carol.json["count"] == 2
    assert to_carol.json["messages"] == [first, second]
    # Nobody is pushed their own message.
    [to_alice] = receiver.to(f"/{alice.handle}")
    assert to_alice.json["messages"] == [second]
    [to_bob] = receiver.to(f"/{bob.handle}")
    assert to_bob.json["messages"] == [first]


def test_bodies_are_cut_to_200_characters(
    client: Any, make_user: Any, chat: Any, receiver: Receiver, make_pusher: Any
) -> None:
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url())
    cid = chat.direct(alice, bob)
    body = "é" * 150 + "x" * 3850
    chat.send(alice, cid, body)
    run_due(make_pusher())
    [got] = receiver.requests
    assert got.json["messages"][0]["body"] == body[:200]


def test_pushes_wait_in_the_worker_while_redis_is_down(
    client: Any,
    make_user: Any,
    chat: Any,
    redis: Any,
    receiver: Receiver,
    make_pusher: Any,
) -> None:
    # They were dropped: a message sent during a Redis outage was never pushed.
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url("/bob"))
    cid = chat.direct(alice, bob)
    hub = runtime.get().hub
    hub.redis_ok = False  # as the dispatcher marks it when Redis stops answering
    try:
        first = chat.send(alice, cid, "still stored")
        second = chat.send(alice, cid, "and this one")
        assert queue_is_empty(redis)
        assert len(push.held) == 1
    finally:
        hub.redis_ok = True
    wait_for(lambda: not push.held, what="the held pushes to be queued")
    assert run_due(make_pusher()) == 1
    [got] = receiver.to("/bob")
    assert got.json["messages"] == [first, second]


def test_fan_out_replayed_by_the_sweep_command_queues_a_push(
    client: Any,
    make_user: Any,
    chat: Any,
    redis: Any,
    push_settings: Any,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`messenger sweep` is wired like the server: its replays push too."""
    from messenger.storage import messages
    from messenger.storage.transaction import pipelined_transaction
    from messenger.workers import sweeper

    # This worker's own sweep loop would replay the row first: pause it.
    monkeypatch.setattr(sweeper, "sweep_once", lambda *args, **kwargs: 0)
    alice, bob = make_user(), make_user()
    add_device(client, bob, "http://127.0.0.1:9/bob")
    cid = chat.direct(alice, bob)
    # A send whose process died after the commit, before its fan-out.
    router = runtime.get().router
    with (
        router.on_conversation(cid, "send_message", transaction=False) as cur,
        pipelined_transaction(cur) as tx,
    ):
        stored = messages.store(tx, cid, alice.id, "crashed-1", "replay me")
        assert stored is not None
        messages.queue_fanout_and_commit(tx, stored)
    assert redis.zscore(keys.PUSH_DUE, f"{bob.id}:{cid}") is None

    env = dict(os.environ)
    env.update(services.env())
    done = subprocess.run(
        [sys.executable, "-m", "messenger", "sweep"],
        cwd=ROOT,
        env=env,
        timeout=60,
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"sweep: finished" in done.stdout
    assert b"sweep: finished 0 " not in done.stdout
    assert redis.zscore(keys.PUSH_DUE, f"{bob.id}:{cid}") is not None
    [pending] = redis.lrange(keys.push_pending(bob.id, cid), 0, -1)
    assert json.loads(pending)["body"] == "replay me"


# ---- coalescing -----------------------------------------------------------------


def test_messages_within_the_window_coalesce_into_one_push(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    push_settings: Any,
    redis: Any,
) -> None:
    push_settings(push_coalesce_secs=30)
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url())
    cid = chat.direct(alice, bob)
    sent = [chat.send(alice, cid, f"message {n}") for n in range(3)]
    pusher = make_pusher()
    assert pusher.promote() == 0  # the window is still open
    assert pusher.process_one() is False
    assert pusher.promote(now=time.time() + 31) == 1
    assert pusher.process_one() is True
    [got] = receiver.requests
    assert got.json["count"] == 3 and got.json["messages"] == sent
    assert got.json["sender_id"] == alice.id
    # The next message opens a new window and a new push.
    later = chat.send(alice, cid, "one more")
    assert run_due(pusher) == 1
    assert receiver.requests[-1].json["messages"] == [later]
    assert queue_is_empty(redis)


def test_a_flood_keeps_the_newest_messages(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
) -> None:
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url())
    cid = chat.direct(alice, bob)
    for n in range(push.BATCH_MAX_MESSAGES + 5):
        chat.send(alice, cid, f"m{n}")
    assert run_due(make_pusher()) == 1
    [got] = receiver.requests
    assert got.json["count"] == push.BATCH_MAX_MESSAGES
    seqs = [m["seq"] for m in got.json["messages"]]
    assert seqs == list(range(6, push.BATCH_MAX_MESSAGES + 6))


def test_real_time_window_in_the_running_worker(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    push_settings: Any,
) -> None:
    # Long enough for four sends on a busy CI machine.
    push_settings(push_coalesce_secs=1.5)
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url())
    cid = chat.direct(alice, bob)
    pusher = make_pusher(concurrency=2)
    serving = gevent.spawn(pusher.run)
    started = time.monotonic()
    for n in range(4):
        chat.send(alice, cid, f"quick {n}")
    wait_for(lambda: receiver.requests, what="the push")
    assert time.monotonic() - started >= 1.2
    gevent.sleep(0.5)  # nothing else is coming
    assert [r.json["count"] for r in receiver.requests] == [4]
    pusher.stop()
    serving.get(timeout=10)


# ---- failures ---------------------------------------------------------------------


def test_receiver_down_then_up_is_delivered_after_retries(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    redis: Any,
) -> None:
    alice, bob = make_user(), make_user()
    device = add_device(client, bob, receiver.url())
    cid = chat.direct(alice, bob)
    receiver.stop()
    sent = chat.send(alice, cid, "are you there?")
    pusher = make_pusher()
    for attempt in (1, 2):
        assert run_due(pusher) == 1
        [raw] = redis.zrange(keys.PUSH_RETRY, 0, -1)
        job = Job.parse(raw)
        assert job.attempt == attempt and job.device_id == device["id"]
        assert job.error and job.error.startswith("network")
    receiver.start()
    assert run_due(pusher) == 1
    [got] = receiver.requests
    assert verify(device["secret"], got.body, got.headers[SIGNATURE_HEADER])
    assert got.json["messages"] == [sent]
    assert queue_is_empty(redis) and redis.llen(keys.PUSH_DEAD) == 0


def test_retries_wait_with_backoff_in_the_running_worker(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    push_settings: Any,
    redis: Any,
) -> None:
    push_settings(push_coalesce_secs=0, push_backoff_base_secs=0.2)
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url())
    receiver.statuses = [503, 502]
    cid = chat.direct(alice, bob)
    pusher = make_pusher(concurrency=1)
    serving = gevent.spawn(pusher.run)
    chat.send(alice, cid, "eventually")
    wait_for(lambda: len(receiver.requests) == 3, what="three attempts")
    # Backoff 0.2 s then 0.4 s, each at least half of that (jitter).
    times = [r.arrived for r in receiver.requests]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2
    wait_for(lambda: queue_is_empty(redis), what="an empty queue")
    assert redis.llen(keys.PUSH_DEAD) == 0
    pusher.stop()
    serving.get(timeout=10)


def test_always_failing_receiver_ends_in_the_dead_letters(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    push_settings: Any,
    redis: Any,
) -> None:
    push_settings(push_max_attempts=3)
    receiver.status = 500
    alice, bob = make_user(), make_user()
    device = add_device(client, bob, receiver.url())
    cid = chat.direct(alice, bob)
    sent = chat.send(alice, cid, "lost?")
    pusher = make_pusher()
    for _ in range(5):
        run_due(pusher)
    assert len(receiver.requests) == 3
    assert queue_is_empty(redis)
    [raw] = redis.lrange(keys.PUSH_DEAD, 0, -1)
    dead = json.loads(raw)
    assert dead["attempt"] == 3 and dead["error"] == "HTTP 500"
    assert dead["user_id"] == bob.id and dead["device_id"] == device["id"]
    assert dead["conversation_id"] == cid and dead["messages"] == [sent]
    assert isinstance(dead["dead_at"], int)
    # The device stays: only 404/410 remove one.
    assert len(client.get("/v1/devices", headers=bob.headers).get_json()["devices"])


@pytest.mark.parametrize("status", [404, 410])
def test_a_gone_device_is_removed(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    redis: Any,
    status: int,
) -> None:
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url("/gone"))
    kept = add_device(client, bob, receiver.url("/kept"))
    receiver.statuses_by_path = {"/gone": [status]}
    cid = chat.direct(alice, bob)
    chat.send(alice, cid, "hello?")
    assert run_due(make_pusher()) == 1
    assert len(receiver.to("/gone")) == 1 and len(receiver.to("/kept")) == 1
    devices = client.get("/v1/devices", headers=bob.headers).get_json()["devices"]
    assert [d["id"] for d in devices] == [kept["id"]]
    assert queue_is_empty(redis) and redis.llen(keys.PUSH_DEAD) == 0
    assert redis.exists(keys.push_devices_flag(bob.id))


def test_the_last_gone_device_clears_the_users_flag(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    redis: Any,
) -> None:
    receiver.status = 410
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url())
    cid = chat.direct(alice, bob)
    chat.send(alice, cid, "hello?")
    run_due(make_pusher())
    assert client.get("/v1/devices", headers=bob.headers).get_json()["devices"] == []
    assert not redis.exists(keys.push_devices_flag(bob.id))
    chat.send(alice, cid, "anyone?")
    assert queue_is_empty(redis)


def test_a_failing_device_does_not_resend_to_the_others(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    redis: Any,
) -> None:
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url("/ok"))
    flaky = add_device(client, bob, receiver.url("/flaky"))
    receiver.statuses_by_path = {"/flaky": [500]}
    chat.send(alice, chat.direct(alice, bob), "twice?")
    pusher = make_pusher()
    run_due(pusher)
    [raw] = redis.zrange(keys.PUSH_RETRY, 0, -1)
    assert Job.parse(raw).device_id == flaky["id"]
    run_due(pusher)
    assert len(receiver.to("/ok")) == 1 and len(receiver.to("/flaky")) == 2
    assert queue_is_empty(redis)


def test_backoff_grows_and_is_jittered() -> None:
    for attempt in range(1, 8):
        delays = {backoff_secs(attempt, 2.0, None) for _ in range(50)}
        full = 2.0 * 2 ** (attempt - 1)
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1
    assert backoff_secs(50, 2.0, None) <= 600
    assert backoff_secs(1, 2.0, 30) == 30


def test_signature_rejects_old_timestamps() -> None:
    body = b'{"type":"messages"}'
    old = int(time.time()) - 301
    assert not verify("s3cret", body, sign("s3cret", body, old))
    assert verify("s3cret", body, sign("s3cret", body, old + 2))
    assert not verify("s3cret", body, "v1=abc")
    header = sign("s3cret", body, 1_700_000_000)
    mac = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"


# ---- several workers, crashes ---------------------------------------------


def test_two_running_workers_send_each_push_once(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    push_settings: Any,
    redis: Any,
) -> None:
    push_settings(push_coalesce_secs=0)
    alice = make_user()
    others = [make_user() for _ in range(8)]
    for user in others:
        add_device(client, user, receiver.url(f"/{user.id}"))
    pushers = [make_pusher(concurrency=3) for _ in range(2)]
    serving = [gevent.spawn(p.run) for p in pushers]
    for user in others:
        chat.send(alice, chat.direct(alice, user), "one each")
    wait_for(lambda: len(receiver.requests) >= len(others), what="every push")
    gevent.sleep(0.5)
    assert sorted(r.path for r in receiver.requests) == sorted(
        f"/{u.id}" for u in others
    )
    for pusher in pushers:
        pusher.stop()
    gevent.joinall(serving, timeout=10, raise_error=True)
    assert queue_is_empty(redis)


def test_jobs_of_a_dead_worker_are_requeued_on_start(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    redis: Any,
) -> None:
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url())
    sent = chat.send(alice, chat.direct(alice, bob), "survives a crash")
    # A worker on another host takes the job, then dies (its heartbeat lapses).
    crashed = make_pusher(worker_id="elsewhere:4242:abcdef")
    crashed.heartbeat()
    crashed.promote(now=time.time() + 60)
    assert redis.lmove(keys.PUSH_QUEUE, crashed.processing, "RIGHT", "LEFT")
    fresh = make_pusher()
    assert fresh.start_up() == 0  # its heartbeat is still fresh: not dead yet
    redis.delete(keys.push_alive(crashed.worker_id))
    assert fresh.start_up() == 1
    assert not redis.sismember(keys.PUSH_WORKERS, crashed.worker_id)
    assert fresh.process_one() is True
    [got] = receiver.requests
    assert got.json["messages"] == [sent]
    assert queue_is_empty(redis)


def test_a_stray_job_in_a_live_workers_processing_list_is_requeued(
    make_pusher: Any, redis: Any
) -> None:
    pusher = make_pusher()
    raw = Job(1, 2, 3, 0, None, [{"sender_id": 2}]).to_json().encode()
    redis.lpush(pusher.processing, raw)  # taken, but no consumer handles it
    assert pusher.recover_strays() == 0  # a consumer may be about to
    assert pusher.recover_strays() == 1
    assert redis.lrange(keys.PUSH_QUEUE, 0, -1) == [raw]
    assert redis.llen(pusher.processing) == 0


def test_device_flags_are_rebuilt_after_redis_lost_them(
    client: Any, make_user: Any, make_pusher: Any, redis: Any
) -> None:
    bob = make_user()
    add_device(client, bob, "http://127.0.0.1:9/bob")
    redis.delete(keys.push_devices_flag(bob.id), keys.PUSH_FLAGS_SYNCED)
    make_pusher().start_up()
    assert redis.exists(keys.push_devices_flag(bob.id))
    assert redis.exists(keys.PUSH_FLAGS_SYNCED)


def _start_worker(services: Services, log: Path, **env: str) -> subprocess.Popen:  # type: ignore[type-arg]
    full = dict(os.environ)
    full.update(services.env(**env))
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "messenger", "push-worker"],
            cwd=ROOT,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_worker_killed_mid_job_is_requeued_and_delivered(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    push_settings: Any,
    services: Services,
    redis: Any,
    tmp_path: Path,
) -> None:
    push_settings(push_coalesce_secs=0)
    alice, bob = make_user(), make_user()
    device = add_device(client, bob, receiver.url())
    receiver.stall = True
    sent = chat.send(alice, chat.direct(alice, bob), "don't lose me")
    log = tmp_path / "push-worker.log"
    env = {"MESSENGER_LOG_JSON": "0", "MESSENGER_LOG_LEVEL": "INFO"}
    first = _start_worker(services, log, MESSENGER_PUSH_TIMEOUT_SECS="30", **env)
    second = None
    try:
        wait_for(lambda: receiver.requests, 30, f"the first try:\n{log.read_text()}")
        [worker_id] = [w.decode() for w in redis.smembers(keys.PUSH_WORKERS)]
        assert redis.llen(keys.push_processing(worker_id)) == 1
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        receiver.stall = False
        receiver.released.set()
        second = _start_worker(services, log, **env)
        wait_for(
            lambda: len(receiver.requests) == 2 and queue_is_empty(redis),
            30,
            f"the requeued job:\n{log.read_text()}",
        )
        got = receiver.requests[1]
        assert verify(device["secret"], got.body, got.headers[SIGNATURE_HEADER])
        assert got.json["messages"] == [sent]
        assert redis.llen(keys.PUSH_DEAD) == 0
        assert worker_id.encode() not in redis.smembers(keys.PUSH_WORKERS)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0, log.read_text()
        assert "requeued 1 jobs of dead worker" in log.read_text()
        assert redis.smembers(keys.PUSH_WORKERS) == set()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_queue_is_bounded_and_each_user_has_a_share(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    redis: Any,
    monkeypatch: Any,
) -> None:
    # An unbounded queue: one user in many busy conversations filled it for all.
    monkeypatch.setattr(push, "PUSH_USER_BATCHES_MAX", 2)
    monkeypatch.setattr(push, "PUSH_BATCHES_MAX", 4)
    alice, bob, carol, dave = make_user(), make_user(), make_user(), make_user()
    for user in (bob, carol, dave):
        add_device(client, user, receiver.url())
    for n in range(4):  # four conversations with bob: only two batches
        chat.send(alice, chat.group(alice, [bob], title=f"b{n}"), "for bob")
    chat.send(alice, chat.direct(alice, carol), "for carol")
    due = {m.decode().split(":")[0] for m in redis.zrange(keys.PUSH_DUE, 0, -1)}
    assert redis.zcard(keys.PUSH_DUE) == 3 and str(carol.id) in due
    chat.send(alice, chat.direct(alice, dave), "for dave")
    chat.send(dave, chat.direct(dave, carol), "to carol, a new batch")
    assert redis.zcard(keys.PUSH_DUE) == 4  # the bound
    # Dropped batches leave no pending messages behind.
    pending = list(redis.scan_iter(match="{push}:pending:*"))
    assert len(pending) == 4


class Tarpit:
    """A receiver that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1000)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.acceptor = gevent.spawn(self._accept)

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            self.held.append(conn)

    def close(self) -> None:
        self.acceptor.kill()
        for conn in self.held:
            conn.close()
        self.sock.close()


def test_a_users_tarpit_webhooks_do_not_stall_other_users_pushes(
    client: Any,
    make_user: Any,
    chat: Any,
    receiver: Receiver,
    make_pusher: Any,
    push_settings: Any,
) -> None:
    # Devices of a job were tried one after another (20 x the timeouts) by 10
    # consumers in all: one user's tarpits held every consumer.
    push_settings(push_coalesce_secs=0.1, push_timeout_secs=3)
    tarpit = Tarpit()
    try:
        alice, mallory, bob = make_user(), make_user(), make_user()
        for n in range(20):
            add_device(client, mallory, f"http://127.0.0.1:{tarpit.port}/t/{n}")
        add_device(client, bob, receiver.url("/bob"))
        pusher = make_pusher(concurrency=4)
        serving = gevent.spawn(pusher.run)
        for n in range(6):  # six jobs for mallory, more than the consumers
            chat.send(alice, chat.group(alice, [mallory], title=f"m{n}"), "slow")
        gevent.sleep(0.5)  # mallory's jobs are taken first
        started = time.monotonic()
        chat.send(alice, chat.direct(alice, bob), "for bob")
        wait_for(lambda: receiver.to("/bob"), timeout=20, what="bob's push")
        took = time.monotonic() - started
        assert took < 3, took
        assert len(tarpit.held) > 1  # mallory's devices were being tried at once
        pusher.stop()
        serving.get(timeout=30)
    finally:
        tarpit.close()


def test_a_message_with_attachments_is_pushed_with_them_and_changes_are_not(
    client: Any, make_user: Any, chat: Any, receiver: Receiver, make_pusher: Any
) -> None:
    alice, bob = make_user(), make_user()
    add_device(client, bob, receiver.url("/bob"))
    cid = chat.direct(alice, bob)
    r = client.post(
        "/v1/attachments?filename=cat.png",
        headers={**alice.headers, "Content-Type": "image/png"},
        data=conftest.png_bytes(),
    )
    attachment = r.get_json()["attachment"]
    r = client.post(
        f"/v1/conversations/{cid}/messages",
        headers=alice.headers,
        json={"client_msg_id": "photo", "attachment_ids": [attachment["id"]]},
    )
    assert r.status_code == 201, r.get_json()
    sent = r.get_json()["message"]
    pusher = make_pusher()
    assert run_due(pusher) == 1
    [got] = receiver.to("/bob")
    assert got.json["messages"] == [sent]
    assert got.json["messages"][0]["body"] == ""
    assert got.json["messages"][0]["attachments"] == [attachment]
    # Edits, reactions and deletes are never pushed.
    url = f"/v1/conversations/{cid}/messages/1"
    client.patch(url, headers=alice.headers, json={"body": "my cat"})
    client.put(url + "/reaction", headers=alice.headers, json={"emoji": "😺"})
    client.delete(url, headers=alice.headers)
    assert run_due(pusher) == 0
    assert len(receiver.to("/bob")) == 1
