"""The delivery fast path (DESIGN.md): a woken poll answers from what the wake
carried, and a poll at the head waits, without reading the database; anything
else reads, and the read stays the truth."""

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from messenger import runtime
from messenger.schemas.events import event_json
from messenger.services import events as events_service
from messenger.storage import events as store
from tests.conftest import wait_until_held


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], int]:
    """reads(user): how many times a poll of user read its events from the
    database so far (polls of other tests' users, still held, don't count)."""
    counts: Counter[int] = Counter()
    original = events_service._read

    def counting(user_id: int, after: int, limit: int) -> store.Page:
        try:
            return original(user_id, after, limit)
        finally:
            counts[user_id] += 1

    monkeypatch.setattr(events_service, "_read", counting)
    return lambda user: counts[user.id]


def _held_poll(
    chat: Any, user: Any, cursor: str, reads: Any = None, timeout: float = 10
) -> Any:
    """A poll held in a greenlet; given `reads`, once its first read is done
    (the poll joins the hub before it reads)."""
    count = reads(user) if reads else 0
    poll = gevent.spawn(chat.poll, user, cursor, timeout)
    wait_until_held(user.id)
    deadline = time.monotonic() + 5
    while reads and reads(user) == count:
        assert time.monotonic() < deadline, "the poll never read"
        gevent.sleep(0.005)
    gevent.sleep(0.01)  # from its read into its wait
    return poll


def _from_database(user_id: int, after: int) -> list[dict[str, Any]]:
    with runtime.get().router.on_user(user_id, "test_read", transaction=False) as cur:
        page = store.read(cur, user_id, after, 100)
    assert page is not None
    return [event_json(e) for e in page.events]


def test_poll_at_the_previous_id_answers_from_the_wake_without_a_read(
    make_user: Any, chat: Any, reads: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.drain(bob, chat.head(bob))[1]
    poll = _held_poll(chat, bob, cursor, reads)  # its first read learns the head
    before = reads(bob)
    message = chat.send(alice, cid, "fast")
    page = poll.get(timeout=5)

    assert reads(bob) == before
    assert page["events"] == _from_database(bob.id, int(cursor))
    assert page["events"][0]["message"] == message
    assert page["cursor"] == str(int(cursor) + 1) and page["more"] is False


def test_re_poll_at_the_head_waits_without_a_read(
    make_user: Any, chat: Any, reads: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.drain(bob, chat.head(bob))[1]
    poll = _held_poll(chat, bob, cursor, reads)
    chat.send(alice, cid, "one")
    cursor = poll.get(timeout=5)["cursor"]
    before = reads(bob)
    poll = _held_poll(chat, bob, cursor)  # the re-poll, at the head

    assert reads(bob) == before
    chat.send(alice, cid, "two")
    page = poll.get(timeout=5)
    assert reads(bob) == before
    assert [e["message"]["body"] for e in page["events"]] == ["two"]


def test_a_poll_reaching_its_deadline_at_the_head_reads_once(
    make_user: Any, chat: Any, reads: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.drain(bob, chat.head(bob))[1]
    poll = _held_poll(chat, bob, cursor, reads)
    chat.send(alice, cid, "one")
    cursor = poll.get(timeout=5)["cursor"]
    before = reads(bob)

    assert chat.poll(bob, cursor, timeout=0.2)["events"] == []
    assert reads(bob) == before + 1  # the deadline's read: a lost wake costs no more


def test_an_older_cursor_reads_the_database(
    make_user: Any, chat: Any, reads: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    start = chat.drain(bob, chat.head(bob))[1]
    poll = _held_poll(chat, bob, start, reads)
    chat.send(alice, cid, "one")
    poll.get(timeout=5)
    poll = _held_poll(chat, bob, str(int(start) + 1))
    chat.send(alice, cid, "two")
    poll.get(timeout=5)
    before = reads(bob)

    # Event start+1 was delivered as the wake carried it, but start is older:
    # the answer from start must begin with an event this worker never kept.
    page = chat.poll(bob, str(int(start) - 1), limit=10)
    assert reads(bob) == before + 1
    assert page["events"] == _from_database(bob.id, int(start) - 1)


def test_an_event_whose_wake_carried_no_id_is_read_not_skipped(
    make_user: Any, chat: Any, client: Any, reads: Any
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    gid = chat.group(alice, [bob])
    cursor = chat.drain(bob, chat.head(bob))[1]
    poll = _held_poll(chat, bob, cursor, reads)
    # A group change goes through the outbox: its wake names bob, not the id.
    r = client.post(
        f"/v1/conversations/{gid}/members",
        headers=alice.headers,
        json={"user_id": carol.id},
    )
    assert r.status_code == 201
    # Bob's poll was at the head: a wake without an id must make it read, at
    # once, not wait for its deadline.
    first = poll.get(timeout=5)
    assert [e["type"] for e in first["events"]] == ["member_added"]
    # The next message's wake carries its id, but the event before it came from
    # a read: a poll from before both reads them from the database.
    before = reads(bob)
    chat.send(alice, gid, "after the change")
    page = chat.poll(bob, cursor, limit=10)
    assert reads(bob) == before + 1
    assert [e["type"] for e in page["events"]] == ["member_added", "message"]
    assert page["events"] == _from_database(bob.id, int(cursor))


def test_an_answer_is_as_full_as_a_read_would_give(
    make_user: Any, chat: Any, client: Any, reads: Any
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    gid = chat.group(alice, [bob])
    cursor = chat.drain(bob, chat.head(bob))[1]
    poll = _held_poll(chat, bob, cursor, reads)
    chat.send(alice, gid, "one")
    poll.get(timeout=5)
    # Event cursor+1 came with its wake, cursor+2 (through the outbox) without,
    # cursor+3 with: a poll from cursor must not stop short after the first.
    r = client.post(
        f"/v1/conversations/{gid}/members",
        headers=alice.headers,
        json={"user_id": carol.id},
    )
    assert r.status_code == 201
    chat.send(alice, gid, "two")
    page = chat.poll(bob, cursor, limit=10)

    assert [e["type"] for e in page["events"]] == ["message", "member_added", "message"]
    assert page["events"] == _from_database(bob.id, int(cursor))
    assert page["more"] is False
