"""A request's fan-out: the conversation's own database before the answer, every
other database behind it, in a bounded pool whose overflow the sweeper takes.

The session's users live on two databases (shards 0-3 on m1, 4-7 on m2), so a
group can have members beside its conversation and members elsewhere.
"""

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import gevent.event
import gevent.pool
import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from messenger import runtime
from messenger.services import fanout, messages
from messenger.storage import events as event_store
from messenger.storage.events import OutboxRow
from messenger.storage.router import Router
from messenger.workers.sweeper import sweep_once
from tests import conftest
from tests.conftest import TEST_SHARDS, settle_fanouts

# A send that waits for nothing but its own transaction and the members beside
# it answers in milliseconds; the old request path waited up to a second for
# the other databases. Generous for a loaded machine.
SEND_SECS_MAX = 0.5

_HOLD_COUNTER = "SELECT 1 FROM {s}.user_state WHERE user_id = %s FOR UPDATE"


@pytest.fixture
def router(app: Any) -> Router:
    return runtime.get().router


def _user_on(make_user: Any, router: Router, dsn: str) -> conftest.TestUser:
    for _ in range(40):
        user: conftest.TestUser = make_user()
        if router.dsn_of(user.id) == dsn:
            return user
    raise AssertionError(f"no user landed on {dsn}")


def _spread_group(
    make_user: Any, chat: Any, router: Router
) -> tuple[conftest.TestUser, conftest.TestUser, conftest.TestUser, int]:
    """A sender and a member beside their group's conversation, a member on the
    other database, and the group."""
    near_dsn = router.shard_map.dsn_of_shard(0)
    far_dsn = router.shard_map.dsn_of_shard(TEST_SHARDS - 1)
    assert near_dsn != far_dsn
    sender, near = (
        _user_on(make_user, router, near_dsn),
        _user_on(make_user, router, near_dsn),
    )
    far = _user_on(make_user, router, far_dsn)
    for _ in range(40):
        cid = int(chat.group(sender, [near, far]))
        if router.dsn_of(cid) == near_dsn:
            return sender, near, far, cid
    raise AssertionError(f"no group landed on {near_dsn}")


def _bodies_after(router: Router, user: conftest.TestUser, cursor: str) -> list[str]:
    """The message bodies in a user's stream after a cursor, read straight from
    its database (the test client would wait for fan-outs in flight)."""
    with router.on_user(user.id, "test_read", transaction=False) as cur:
        page = event_store.read(cur, user.id, int(cursor), 500)
    assert page is not None
    return [e.fields["message"].body for e in page.events if e.type == "message"]


@contextmanager
def _counter_held(router: Router, user: conftest.TestUser) -> Iterator[None]:
    """Hold a user's event counter (a row lock on its database): a fan-out to
    the user waits until the block ends, as with a slow server."""
    with router.on_user(user.id, "test_hold_counter") as cur:
        cur.run(_HOLD_COUNTER, (user.id,))
        assert cur.rowcount == 1
        yield


def _send(sender: conftest.TestUser, cid: int, body: str) -> float:
    started = time.monotonic()
    _, created = messages.send(
        sender.id, cid, client_msg_id=secrets.token_hex(6), body=body
    )
    assert created
    return time.monotonic() - started


def test_a_send_answers_before_a_slow_databases_part_of_its_fan_out(
    make_user: Any, chat: Any, router: Router
) -> None:
    sender, near, far, cid = _spread_group(make_user, chat, router)
    cursors = {u.id: chat.head(u) for u in (sender, near, far)}
    with _counter_held(router, far):
        secs = _send(sender, cid, "behind")
        # The conversation's own database has its members' events already; the
        # other database's part waits for the held counter, not the answer.
        assert _bodies_after(router, sender, cursors[sender.id]) == ["behind"]
        assert _bodies_after(router, near, cursors[near.id]) == ["behind"]
        gevent.sleep(0.2)
        assert _bodies_after(router, far, cursors[far.id]) == []
        assert len(runtime.get().background_fanouts) == 1
    assert secs < SEND_SECS_MAX, secs
    settle_fanouts()
    events, _ = chat.drain(far, cursors[far.id])
    assert [e["message"]["body"] for e in events if e["type"] == "message"] == [
        "behind"
    ]


def test_every_kind_of_change_answers_before_a_slow_databases_part(
    client: Any, make_user: Any, chat: Any, router: Router
) -> None:
    """Edits, reactions, receipts, deletes, group changes: each answers without
    waiting for the member whose database is slow, who then gets every event,
    once and in order."""
    sender, near, far, cid = _spread_group(make_user, chat, router)
    chat.send(sender, cid, "first")
    newcomer = _user_on(make_user, router, router.dsn_of(far.id))
    cursor = chat.head(far)
    url = f"/v1/conversations/{cid}"
    changes = [
        ("patch", f"{url}/messages/1", sender, {"body": "edited"}),
        ("put", f"{url}/messages/1/reaction", near, {"emoji": "👍"}),
        ("post", f"{url}/receipts", near, {"type": "read", "seq": 1}),
        ("delete", f"{url}/messages/1", sender, None),
        ("patch", url, near, {"title": "renamed"}),
        ("post", f"{url}/members", near, {"user_id": newcomer.id}),
        ("delete", f"{url}/members/{newcomer.id}", sender, None),
        ("delete", url, sender, None),
    ]
    # Flask's own client: the tests' one would wait for the fan-outs behind.
    app = client.application
    plain = FlaskClient(app, app.response_class)
    with _counter_held(router, far):
        for method, path, actor, body in changes:
            started = time.monotonic()
            r = plain.open(path, method=method, headers=actor.headers, json=body)
            secs = time.monotonic() - started
            assert r.status_code in (200, 201, 204), (path, r.get_json())
            assert secs < SEND_SECS_MAX, (path, secs)
    settle_fanouts()
    events, _ = chat.drain(far, cursor)
    assert [e["type"] for e in events if "id" in e] == [
        "message_updated",
        "message_updated",
        "receipt",  # delivered
        "receipt",  # read
        "message_updated",
        "conversation_updated",
        "member_added",
        "member_removed",
        "conversation_deleted",
    ]


def test_a_full_pool_leaves_the_other_databases_to_the_sweeper(
    make_user: Any, chat: Any, router: Router, monkeypatch: pytest.MonkeyPatch
) -> None:
    sender, near, far, cid = _spread_group(make_user, chat, router)
    cursors = {u.id: chat.head(u) for u in (near, far)}
    left_before = _left_to_sweeper()
    release = gevent.event.Event()
    full = gevent.pool.Pool(1)
    full.spawn(release.wait, 30)
    monkeypatch.setattr(runtime.get(), "background_fanouts", full)
    try:
        assert _send(sender, cid, "swept") < SEND_SECS_MAX
        assert _bodies_after(router, near, cursors[near.id]) == ["swept"]
        assert _bodies_after(router, far, cursors[far.id]) == []
        assert _left_to_sweeper() == left_before + 1
        assert len(full) == 1  # nothing was queued behind the blocker
    finally:
        release.set()
        full.join(timeout=5)
    assert sweep_once(runtime.get(), older_than_secs=0) >= 1
    assert _bodies_after(router, far, cursors[far.id]) == ["swept"]
    assert _bodies_after(router, near, cursors[near.id]) == ["swept"]


def _left_to_sweeper() -> float:
    value = REGISTRY.get_sample_value("messenger_fanouts_left_to_sweeper_total")
    return value or 0.0


def test_an_older_fan_out_reaching_a_database_last_undoes_nothing(
    client: Any,
    make_user: Any,
    chat: Any,
    router: Router,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two fan-outs of one conversation race to another database: the older one
    (its outbox read before the newer change) may get there second. It must then
    add nothing, undo nothing (an edit's newer text, a member's removal) and
    push nothing again."""
    sender, near, far, cid = _spread_group(make_user, chat, router)
    newcomer = _user_on(make_user, router, router.dsn_of(far.id))
    chat.send(sender, cid, "first")
    cursor = chat.head(far)
    rt = runtime.get()
    # Nothing runs behind the answers here: the test runs the parts itself.
    release = gevent.event.Event()
    full = gevent.pool.Pool(1)
    full.spawn(release.wait, 30)
    monkeypatch.setattr(rt, "background_fanouts", full)
    hooked: list[tuple[str, int]] = []

    def record(rows: list[OutboxRow]) -> None:
        hooked.extend(
            (event_store.origin_of(row), user_id)
            for row in rows
            for user_id in row.recipients
            if user_id in (far.id, newcomer.id)
        )

    monkeypatch.setattr(rt, "after_fanout", [record])
    app = client.application
    plain = FlaskClient(app, app.response_class)
    url = f"/v1/conversations/{cid}"
    far_dsn = router.dsn_of(far.id)
    try:
        older = []
        for method, path, body in [
            ("patch", f"{url}/messages/1", {"body": "old text"}),
            ("post", f"{url}/members", {"user_id": newcomer.id}),
            ("post", f"{url}/messages", {"client_msg_id": "m2", "body": "second"}),
            ("patch", f"{url}/messages/1", {"body": "new text"}),
            ("delete", f"{url}/members/{newcomer.id}", None),
        ]:
            r = plain.open(path, method=method, headers=sender.headers, json=body)
            assert r.status_code in (200, 201, 204), r.get_json()
            # What a request's fan-out hands to its part on the other database.
            pending = fanout._fan_out_own_database(rt, cid)
            assert pending is not None and far_dsn in pending.remote
            older.append(pending)
        # The newest first (it carries every row), then the older ones.
        for pending in reversed(older):
            fanout._fan_out_remote(rt, pending, far_dsn)
    finally:
        release.set()
        full.join(timeout=5)
    events, _ = chat.drain(far, cursor)
    assert [e["type"] for e in events if "id" in e] == [
        "message_updated",
        "member_added",
        "message",
        "message_updated",
        "member_removed",
    ]
    assert events[3]["message"]["body"] == "new text"
    r = client.get("/v1/search?q=old", headers=far.headers)
    assert r.get_json()["messages"] == []
    r = client.get("/v1/search?q=new", headers=far.headers)
    assert [m["body"] for m in r.get_json()["messages"]] == ["new text"]
    listed = client.get("/v1/conversations", headers=newcomer.headers).get_json()
    assert cid not in [c["id"] for c in listed["conversations"]]
    # Each row reached the hooks (push) once for each member there.
    assert len(hooked) == len(set(hooked)) == 5 + 4, hooked
