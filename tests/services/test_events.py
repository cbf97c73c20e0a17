"""The long poll: immediate answers, held polls, cursors, more, retention."""

import socket
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent.pywsgi import WSGIHandler, WSGIServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messenger import runtime
from tests.conftest import wait_until_held


def test_without_after_answers_head_at_once(client: Any, make_user: Any) -> None:
    user = make_user()
    r = client.get("/v1/events", headers=user.headers)
    assert r.status_code == 200
    body = r.get_json()
    assert body["events"] == [] and isinstance(body["cursor"], str)
    assert r.headers["Cache-Control"] == "no-store"


def test_waiting_events_answer_at_once(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cursor = chat.head(bob)
    cid = chat.direct(alice, bob)
    sent = chat.send(alice, cid, "hello")
    started = time.monotonic()
    page = chat.poll(bob, cursor, timeout=20)
    assert time.monotonic() - started < 2
    messages = [e for e in page["events"] if e["type"] == "message"]
    assert messages[0]["message"] == sent
    assert all(isinstance(e["id"], int) for e in page["events"])
    assert page["cursor"] == str(page["events"][-1]["id"])
    assert page["more"] is False
    # The cursor moved past them: the next poll answers empty with it.
    again = chat.poll(bob, page["cursor"])
    assert again == {"events": [], "cursor": page["cursor"], "more": False}


def test_held_poll_is_woken_by_a_send(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.poll(bob, chat.head(bob))["cursor"]
    cursor = chat.drain(bob, cursor)[1]
    waiting = gevent.spawn(chat.poll, bob, cursor, 20)
    wait_until_held(bob.id)
    started = time.monotonic()
    chat.send(alice, cid, "wake up")
    page = waiting.get(timeout=5)
    assert time.monotonic() - started < 1
    assert [e["message"]["body"] for e in page["events"]] == ["wake up"]


def test_poll_times_out_with_same_cursor(
    client: Any, make_user: Any, chat: Any
) -> None:
    user = make_user()
    cursor = chat.head(user)
    started = time.monotonic()
    page = chat.poll(user, cursor, timeout=1)
    assert 0.9 <= time.monotonic() - started < 3
    assert page == {"events": [], "cursor": cursor, "more": False}
    assert not runtime.get().hub.is_holding(user.id)


def test_every_device_of_a_user_wakes(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.drain(bob, chat.head(bob))[1]
    polls = [gevent.spawn(chat.poll, bob, cursor, 20) for _ in range(3)]
    deadline = time.monotonic() + 5
    while runtime.get().hub.polls_of(bob.id) < 3:
        assert time.monotonic() < deadline
        gevent.sleep(0.005)
    chat.send(alice, cid, "to all devices")
    for poll in polls:
        assert poll.get(timeout=5)["events"][0]["message"]["body"] == "to all devices"


def test_more_and_offline_catch_up(client: Any, make_user: Any, chat: Any) -> None:
    """A member polling after 300 messages gets each once, over several polls."""
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.drain(bob, chat.head(bob))[1]
    for i in range(300):
        chat.send(alice, cid, f"m{i}")
    seen: list[int] = []
    polls = 0
    while True:
        page = chat.poll(bob, cursor, limit=100)
        polls += 1
        seen.extend(e["message"]["seq"] for e in page["events"])
        assert page["more"] == (len(seen) < 300)
        cursor = page["cursor"]
        if not page["more"]:
            break
    assert seen == list(range(1, 301))
    assert polls == 3


def test_query_validation(client: Any, make_user: Any, chat: Any) -> None:
    user = make_user()
    cursor = chat.head(user)
    for bad in (
        "timeout=56",
        "timeout=-1",
        "timeout=abc",
        "limit=0",
        "limit=501",
        "after=abc",
        "after=-5",
    ):
        r = client.get(
            f"/v1/events?after={cursor}&{bad}"
            if not bad.startswith("after")
            else f"/v1/events?{bad}",
            headers=user.headers,
        )
        assert r.status_code == 422, bad
        assert r.get_json()["error"]["code"] == "validation_failed"
    # Cache busters from old proxies are ignored, not refused.
    r = client.get(f"/v1/events?after={cursor}&timeout=0&_=123", headers=user.headers)
    assert r.status_code == 200


def test_cursor_from_the_future_is_410(client: Any, make_user: Any, chat: Any) -> None:
    user = make_user()
    head = int(chat.head(user))
    r = client.get(f"/v1/events?after={head + 1000}&timeout=0", headers=user.headers)
    assert r.status_code == 410
    assert r.get_json()["error"]["code"] == "cursor_expired"


def test_trimmed_cursor_is_410(
    client: Any, make_user: Any, chat: Any, shards: Any
) -> None:
    from messenger.workers import sweeper

    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    old = chat.head(bob)
    chat.send(alice, cid, "old news")
    with shards.on_user(bob.id, "age_events") as cur:
        cur.run(
            "UPDATE {s}.events SET created_at = now() - interval '40 days' "
            "WHERE user_id = %s",
            (bob.id,),
        )
    assert sweeper.trim_once(runtime.get(), 30) >= 1
    r = client.get(f"/v1/events?after={old}&timeout=0", headers=bob.headers)
    assert r.status_code == 410
    fresh = chat.head(bob)
    assert chat.poll(bob, fresh)["events"] == []
    # History still has the message after its event is trimmed.
    history = client.get(
        f"/v1/conversations/{cid}/messages", headers=bob.headers
    ).get_json()
    assert [m["body"] for m in history["messages"]] == ["old news"]


class _GunicornLikeHandler(WSGIHandler):
    """Hands the app the client's socket the way gunicorn's gevent worker does."""

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ["gunicorn.socket"] = self.socket
        return environ


@pytest.fixture
def served(app: Any) -> Iterator[tuple[str, int]]:
    """The app on a real loopback socket (the test client has none to close)."""
    server = WSGIServer(
        ("127.0.0.1", 0),
        app,
        handler_class=_GunicornLikeHandler,
        log=None,
        error_log=None,
    )
    server.start()
    try:
        yield server.address
    finally:
        server.stop(timeout=1)


def test_client_hanging_up_releases_its_held_poll(
    served: tuple[str, int], make_user: Any, chat: Any
) -> None:
    user = make_user()
    cursor = chat.head(user)
    client_socket = socket.create_connection(served, timeout=5)
    client_socket.sendall(
        f"GET /v1/events?after={cursor}&timeout=30 HTTP/1.1\r\n"
        f"Host: localhost\r\nAuthorization: Bearer {user.token}\r\n\r\n".encode()
    )
    wait_until_held(user.id)
    client_socket.close()
    # Released by the hang-up, not by the poll's 30 s deadline.
    deadline = time.monotonic() + 3
    while runtime.get().hub.is_holding(user.id):
        assert time.monotonic() < deadline, "the poll outlived its client"
        gevent.sleep(0.01)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from([0, 0.02, 0.2])),
        min_size=1,
        max_size=12,
    )
)
def test_polling_with_every_cursor_sees_each_event_once(
    client: Any, make_user: Any, chat: Any, plan: list[Any]
) -> None:
    """Sends at random moments around a client's polls: nothing lost or repeated."""
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.drain(bob, chat.head(bob))[1]
    expected: list[int] = []

    def sender() -> None:
        for count, pause in plan:
            gevent.sleep(pause)
            for _ in range(count):
                expected.append(chat.send(alice, cid)["seq"])

    job = gevent.spawn(sender)
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        page = chat.poll(bob, cursor, timeout=0.05 if not job.dead else 0, limit=3)
        seen.extend(
            e["message"]["seq"] for e in page["events"] if e["type"] == "message"
        )
        cursor = page["cursor"]
        if job.dead and not page["more"] and not page["events"]:
            break
    job.get()
    assert seen == expected == list(range(1, len(expected) + 1))


def test_ephemeral_events_are_gathered_but_never_delay_a_message(
    client: Any, make_user: Any, chat: Any
) -> None:
    from messenger.services import events as poll_service

    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.drain(bob, chat.head(bob))[1]
    waiting = gevent.spawn(chat.poll, bob, cursor, 20)
    wait_until_held(bob.id)
    typing = client.post(f"/v1/conversations/{cid}/typing", headers=alice.headers)
    assert typing.status_code == 204
    started = time.monotonic()
    chat.send(alice, cid, "right after typing")
    page = waiting.get(timeout=5)
    # The message cut the gathering short: no waiting out the linger.
    assert time.monotonic() - started < poll_service.EPHEMERAL_LINGER_SECS
    kinds = [e["type"] for e in page["events"]]
    assert "message" in kinds and "typing" in kinds
    # Typing alone is answered once the linger is over, with the cursor unchanged.
    cursor = page["cursor"]
    waiting = gevent.spawn(chat.poll, bob, cursor, 20)
    wait_until_held(bob.id)
    started = time.monotonic()
    client.post(f"/v1/conversations/{cid}/typing", headers=alice.headers)
    page = waiting.get(timeout=5)
    assert time.monotonic() - started >= poll_service.EPHEMERAL_LINGER_SECS * 0.9
    assert [e["type"] for e in page["events"]] == ["typing"]
    assert page["cursor"] == cursor


def test_a_large_answer_stops_early_by_bytes_and_writes_utf8(
    client: Any, make_user: Any, chat: Any
) -> None:
    # 500 events of 4,000 astral characters made a 24 MB answer (each character
    # escaped as 12 bytes), encoded on the worker's event loop.
    from messenger.api.events import POLL_ANSWER_MAX_BYTES

    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.head(bob)
    body = "\U0001f600" * 4000  # 16,000 bytes of UTF-8
    count = POLL_ANSWER_MAX_BYTES // 16_000 + 20
    for _ in range(count):
        chat.send(alice, cid, body)
    r = client.get(
        f"/v1/events?after={cursor}&timeout=0&limit=500", headers=bob.headers
    )
    raw = r.get_data()
    assert r.status_code == 200
    assert b"\\ud83d" not in raw and "\U0001f600".encode() in raw
    first = r.get_json()
    assert first["more"] is True
    assert len(raw) < POLL_ANSWER_MAX_BYTES + 64_000, len(raw)
    assert 0 < len(first["events"]) < count
    assert first["cursor"] == str(first["events"][-1]["id"])
    rest, _ = chat.drain(bob, first["cursor"])
    seqs = [e["message"]["seq"] for e in first["events"] + rest]
    assert seqs == list(range(1, count + 1))  # nothing skipped or repeated


def _age_events(shards: Any, user_ids: list[int]) -> None:
    for user_id in user_ids:
        with shards.on_user(user_id, "age_events") as cur:
            cur.run(
                "UPDATE {s}.events SET created_at = now() - interval '40 days' "
                "WHERE user_id = %s",
                (user_id,),
            )


def test_trim_goes_in_short_batches_in_the_fanouts_lock_order(
    client: Any, make_user: Any, chat: Any, shards: Any
) -> None:
    # The trim was one transaction per database: it held every trimmed user's
    # counter locked until the database's last shard was done (and could
    # deadlock with fan-outs, which lock in another order).
    from messenger.workers import sweeper

    rt = runtime.get()
    shard_map = rt.router.shard_map
    users = [make_user() for _ in range(24)]
    by_dsn: dict[str, list[Any]] = {}
    for u in users:
        by_dsn.setdefault(rt.router.dsn_of(u.id), []).append(u)
    dsn, on_dsn = max(by_dsn.items(), key=lambda kv: len(kv[1]))
    on_dsn.sort(key=lambda u: shard_map.shard_of(u.id))
    early, late = on_dsn[0], on_dsn[-1]
    assert shard_map.shard_of(early.id) < shard_map.shard_of(late.id)
    friend = make_user()
    for u in (early, late):
        chat.send(friend, chat.direct(friend, u), "old")
    _age_events(shards, [early.id, late.id])

    # Another transaction holds the late user's counter: the trim waits there.
    blocker = rt.router.on_user(late.id, "hold_counter")
    cur = blocker.__enter__()
    try:
        cur.run(
            "SELECT 1 FROM {s}.user_state WHERE user_id = %s FOR UPDATE", (late.id,)
        )
        trim = gevent.spawn(sweeper.trim_once, rt, 30, batch_rows=2)
        gevent.sleep(0.5)
        assert not trim.ready()
        # The early user's batch is committed: a message to them goes through.
        cid = chat.direct(friend, early)
        sender = gevent.spawn(chat.send, friend, cid, "while trimming")
        sender.join(timeout=5)
        assert sender.ready(), "a fan-out waited for the trim's locks"
    finally:
        blocker.__exit__(None, None, None)
    trim.join(timeout=30)
    assert trim.successful() and trim.value >= 2


def test_trim_under_concurrent_fanouts_loses_nothing_and_never_deadlocks(
    client: Any, make_user: Any, chat: Any, shards: Any
) -> None:
    from messenger.workers import sweeper

    rt = runtime.get()
    owner = make_user()
    members = [make_user() for _ in range(12)]
    groups = [chat.group(owner, members, title=f"t{n}") for n in range(3)]
    cursors = {m.id: chat.head(m) for m in members}
    for g in groups:
        for n in range(5):
            chat.send(owner, g, f"old {n}")
    _age_events(shards, [m.id for m in members])
    cursors = {m.id: chat.head(m) for m in members}
    stop = time.monotonic() + 3

    def sender(conversation_id: int) -> int:
        sent = 0
        while time.monotonic() < stop:
            chat.send(owner, conversation_id, f"new {sent}")
            sent += 1
        return sent

    def trimmer() -> int:
        passes = 0
        while time.monotonic() < stop:
            sweeper.trim_once(rt, 30, batch_rows=3)
            _age_events(shards, [m.id for m in members[:4]])
            passes += 1
        return passes

    jobs = [gevent.spawn(sender, g) for g in groups] + [gevent.spawn(trimmer)]
    gevent.joinall(jobs, timeout=60, raise_error=True)
    sent = sum(j.value for j in jobs[:3])
    assert sent > 0 and jobs[-1].value > 0
    # Members whose events were never re-aged since their head see every message.
    for m in members[4:]:
        events, _ = chat.drain(m, cursors[m.id])
        assert len([e for e in events if e["type"] == "message"]) == sent


def _aged_event_count(shards: Any, user_id: int) -> int:
    with shards.on_user(user_id, "count_aged") as cur:
        (count,) = cur.one(
            "SELECT count(*) FROM {s}.events WHERE user_id = %s "
            "AND created_at < now() - interval '30 days'",
            (user_id,),
        )
    return int(count)


def test_trim_skips_a_database_that_is_down_and_trims_the_others(
    client: Any, make_user: Any, chat: Any, shards: Any
) -> None:
    # An unavailable database raised out of trim_once: the pass ended there (a
    # traceback every hour) and the databases after it were never trimmed.
    from messenger.workers import sweeper

    rt = runtime.get()
    users = [make_user() for _ in range(16)]
    by_dsn: dict[str, Any] = {}
    for u in users:
        by_dsn.setdefault(rt.router.dsn_of(u.id), u)
    assert len(by_dsn) >= 2, "the test rig has one database"
    friend = make_user()
    for u in by_dsn.values():
        chat.send(friend, chat.direct(friend, u), "old")
    _age_events(shards, [u.id for u in by_dsn.values()])
    down_dsn = next(iter(rt.router.shard_map.shards_by_dsn()))  # trimmed first
    down_user = by_dsn[down_dsn]
    breaker = rt.router.pools[down_dsn].breaker
    for _ in range(6):
        breaker.failed()  # open for about BREAKER_MAX_SECS
    try:
        sweeper.trim_once(rt, 30)
    finally:
        breaker.succeeded()
    assert _aged_event_count(shards, down_user.id) > 0
    for dsn, u in by_dsn.items():
        if dsn != down_dsn:
            assert _aged_event_count(shards, u.id) == 0, rt.router.pools[dsn].label
