"""Presence: online from held or recent polls, debounced, announced to peers."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import gevent
import pytest
from prometheus_client import REGISTRY

from messenger import runtime
from messenger.realtime.connections import shared_client
from messenger.realtime.presence import PresenceBoard
from messenger.services import presence
from tests.conftest import settle_presence, wait_until_held

GRACE_SECS = 1.0


@pytest.fixture
def tracker(app: Any) -> presence.Tracker:
    found = presence.tracker()
    assert found is not None
    return found


@pytest.fixture
def short_grace(override_settings: Any, tracker: presence.Tracker) -> Iterator[float]:
    """A 1 s grace window (the tracker then ticks every 0.25 s)."""
    override_settings(presence_grace_secs=GRACE_SECS)
    tracker.kick.set()
    yield GRACE_SECS
    tracker.kick.set()


@pytest.fixture
def announced(
    tracker: presence.Tracker, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, str]]:
    """Every (user_id, status) the tracker announces during the test."""
    seen: list[tuple[int, str]] = []
    original = tracker.announce

    def record(user_id: int, status: str, last_seen: float) -> None:
        seen.append((user_id, status))
        original(user_id, status, last_seen)

    monkeypatch.setattr(tracker, "announce", record)
    return seen


def _presence(client: Any, user: Any, *ids: int) -> dict[str, Any]:
    r = client.get(
        "/v1/presence?user_ids=" + ",".join(map(str, ids)), headers=user.headers
    )
    assert r.status_code == 200, r.get_json()
    return r.get_json()["presence"]  # type: ignore[no-any-return]


def _redis_errors() -> float:
    value = REGISTRY.get_sample_value(
        "messenger_redis_errors_total", {"op": "presence"}
    )
    return value or 0.0


def _presence_events(page: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in page["events"] if e["type"] == "presence"]


def _parse(iso: str) -> float:
    return (
        datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    )


def test_first_poll_goes_online_and_peers_hear_it(
    client: Any, make_user: Any, chat: Any, announced: list[Any]
) -> None:
    alice, bob, stranger = make_user(), make_user(), make_user()
    chat.direct(alice, bob)
    never = _presence(client, bob, alice.id)
    assert never == {str(alice.id): {"status": "offline", "last_seen": None}}
    bob_cursor = chat.head(bob)
    stranger_cursor = chat.head(stranger)
    settle_presence()
    waiting = gevent.spawn(chat.poll, bob, bob_cursor, 10)
    wait_until_held(bob.id)
    # The stranger shares no conversation with alice: never told.
    stranger_waiting = gevent.spawn(chat.poll, stranger, stranger_cursor, 1)
    wait_until_held(stranger.id)
    before = time.time()
    chat.head(alice)
    page = waiting.get(timeout=5)
    (event,) = _presence_events(page)
    assert event["user_id"] == alice.id and event["status"] == "online"
    assert set(event) == {"type", "user_id", "status", "last_seen"}
    assert before - 1 <= _parse(event["last_seen"]) <= time.time() + 1
    assert page["cursor"] == bob_cursor  # ephemeral: the cursor does not move
    assert _presence_events(stranger_waiting.get(timeout=5)) == []
    assert announced.count((alice.id, "online")) == 1
    answer = _presence(client, bob, alice.id)
    assert answer[str(alice.id)]["status"] == "online"


def test_back_to_back_polls_stay_online(
    client: Any, make_user: Any, chat: Any, short_grace: float, announced: list[Any]
) -> None:
    alice, bob = make_user(), make_user()
    chat.direct(alice, bob)
    cursor = chat.head(alice)
    settle_presence()
    assert announced.count((alice.id, "online")) == 1
    # Polls end and start again for longer than the grace window...
    started = time.monotonic()
    while time.monotonic() - started < 1.5 * short_grace:
        cursor = chat.poll(alice, cursor, timeout=0.3)["cursor"]
        assert _presence(client, bob, alice.id)[str(alice.id)]["status"] == "online"
    # ...and one poll is held for longer than it.
    held = gevent.spawn(chat.poll, alice, cursor, 1.6 * short_grace)
    wait_until_held(alice.id)
    gevent.sleep(1.3 * short_grace)
    assert _presence(client, bob, alice.id)[str(alice.id)]["status"] == "online"
    held.get(timeout=5)
    settle_presence()
    assert (alice.id, "offline") not in announced
    assert announced.count((alice.id, "online")) == 1


def test_offline_after_the_grace_window(
    client: Any, make_user: Any, chat: Any, short_grace: float, announced: list[Any]
) -> None:
    alice, bob = make_user(), make_user()
    chat.direct(alice, bob)
    bob_cursor = chat.head(bob)
    chat.head(alice)
    last_poll = time.time()
    settle_presence()
    # One poll held across the window: the announcement wakes it.
    page = chat.poll(bob, bob_cursor, timeout=10 * short_grace)
    went_offline = time.time()
    (event,) = _presence_events(page)
    assert (event["user_id"], event["status"]) == (alice.id, "offline")
    # Not before the window (less the few ms between her poll's end and now).
    assert went_offline - last_poll >= short_grace - 0.1
    assert abs(_parse(event["last_seen"]) - last_poll) < 0.5
    assert announced.count((alice.id, "offline")) == 1
    answer = _presence(client, bob, alice.id)[str(alice.id)]
    assert answer["status"] == "offline"
    assert answer["last_seen"] == event["last_seen"]
    # Her next poll brings her back, announced once more.
    waiting = gevent.spawn(chat.poll, bob, bob_cursor, 10)
    wait_until_held(bob.id)
    chat.head(alice)
    events = _presence_events(waiting.get(timeout=5))
    assert [(e["user_id"], e["status"]) for e in events] == [(alice.id, "online")]


def test_presence_answers_only_about_peers(
    client: Any, make_user: Any, chat: Any
) -> None:
    me, peer, group_peer, stranger = make_user(), make_user(), make_user(), make_user()
    # Opened by the peers: neither of them is a message request, so both show.
    chat.direct(peer, me)
    chat.group(group_peer, [me])
    for user in (me, peer, group_peer, stranger):
        chat.head(user)
    answer = _presence(client, me, peer.id, group_peer.id, stranger.id, me.id, 987654)
    assert set(answer) == {str(peer.id), str(group_peer.id), str(me.id)}
    for info in answer.values():
        assert info["status"] == "online"
        assert _parse(info["last_seen"]) <= time.time() + 1
    assert _presence(client, stranger, me.id) == {}


def test_presence_query_validation(client: Any, make_user: Any) -> None:
    user = make_user()
    for query in (
        "",
        "?user_ids=",
        "?user_ids=abc",
        "?user_ids=0",
        "?user_ids=1,-2",
        "?user_ids=" + ",".join(str(i) for i in range(1, 202)),
    ):
        r = client.get("/v1/presence" + query, headers=user.headers)
        assert r.status_code == 422, query
    assert client.get("/v1/presence?user_ids=1").status_code == 401


def test_redis_trouble_never_reaches_a_poll(
    client: Any, make_user: Any, chat: Any, services: Any
) -> None:
    """A tracker whose Redis is down keeps its notes and counts the errors."""
    from messenger.embedded import free_port

    down = shared_client(f"redis://127.0.0.1:{free_port()}", 2)
    broken = presence.Tracker(runtime.get(), PresenceBoard(down))
    user = make_user()
    before = _redis_errors()
    broken.note(user.id)
    broken.step()
    assert user.id in broken.notes  # kept for the next try
    assert _redis_errors() == before + 1
    # The poll path itself only writes to memory.
    cursor = chat.head(user)
    assert chat.poll(user, cursor)["cursor"] == cursor


def test_repolls_of_a_held_user_are_not_rewritten_until_the_poll_ends(
    make_user: Any, chat: Any, tracker: presence.Tracker
) -> None:
    alice = make_user()
    cursor = chat.head(alice)
    settle_presence()
    first = tracker.board.last_seen([alice.id])[alice.id]
    held = gevent.spawn(chat.poll, alice, cursor, 2)
    wait_until_held(alice.id)
    settle_presence()
    # An answer and the next poll of a user held here: online either way.
    tracker.note(alice.id)
    settle_presence()
    assert tracker.board.last_seen([alice.id])[alice.id] == first
    # When the poll ends, its end is written: last seen is exact.
    held.get(timeout=5)
    settle_presence()
    assert tracker.board.last_seen([alice.id])[alice.id] > first
