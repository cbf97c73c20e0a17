"""Typing: ephemeral, to the other members' waiting polls only, rate-limited."""

from typing import Any

import gevent

from tests.conftest import settle_presence, stored_events, wait_until_held


def _typing(client: Any, user: Any, cid: int) -> Any:
    # No body and no Content-Type: API.md allows that for typing.
    return client.post(f"/v1/conversations/{cid}/typing", headers=user.headers)


def test_typing_reaches_waiting_peers_and_no_one_else(
    client: Any, make_user: Any, chat: Any
) -> None:
    typer, a, b, outsider = make_user(), make_user(), make_user(), make_user()
    cid = chat.group(typer, [a, b])
    # The outsider shares another conversation with the typer: still not told.
    chat.direct(typer, outsider)
    cursors = {u.id: chat.drain(u, chat.head(u))[1] for u in (typer, a, b, outsider)}
    settle_presence()
    peers = {u.id: gevent.spawn(chat.poll, u, cursors[u.id], 10) for u in (a, b)}
    others = {
        u.id: gevent.spawn(chat.poll, u, cursors[u.id], 1) for u in (typer, outsider)
    }
    for user in (a, b, typer, outsider):
        wait_until_held(user.id)
    r = _typing(client, typer, cid)
    assert r.status_code == 204 and r.data == b""
    for user in (a, b):
        page = peers[user.id].get(timeout=5)
        assert page["events"] == [
            {"type": "typing", "conversation_id": cid, "user_id": typer.id}
        ]
        # Never stored: the cursor does not move.
        assert page["cursor"] == cursors[user.id]
    for user in (typer, outsider):
        page = others[user.id].get(timeout=5)
        assert not [e for e in page["events"] if e["type"] == "typing"]
    # Nobody finds it later either.
    for user in (a, b):
        events, _ = chat.drain(user, cursors[user.id])
        assert stored_events(events) == []


def test_typing_to_no_waiting_poll_is_lost(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.drain(bob, chat.head(bob))[1]
    assert _typing(client, alice, cid).status_code == 204
    page = chat.poll(bob, cursor)
    assert not [e for e in page["events"] if e["type"] == "typing"]


def test_typing_rules(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob, mallory = make_user(), make_user(), make_user()
    cid = chat.direct(alice, bob)
    assert _typing(client, mallory, cid).status_code == 404
    assert _typing(client, alice, 987654321).status_code == 404
    # MESSENGER_RATE_LIMITS=off in tests: every call passes.
    for _ in range(3):
        assert _typing(client, alice, cid).status_code == 204
    r = client.post(
        f"/v1/conversations/{cid}/typing", headers=alice.headers, json={"x": 1}
    )
    assert r.status_code == 204


def test_typing_is_rate_limited_per_user(
    client: Any, make_user: Any, chat: Any, override_settings: Any
) -> None:
    from messenger.services import ratelimit

    ratelimit.reset_backoff()
    override_settings(rate_limits="typing=2/60s")
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    other = chat.group(alice, [bob])
    assert _typing(client, alice, cid).status_code == 204
    assert _typing(client, alice, other).status_code == 204
    r = _typing(client, alice, cid)
    assert r.status_code == 429
    assert r.get_json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    # Another user has a limit of its own.
    assert _typing(client, bob, cid).status_code == 204
