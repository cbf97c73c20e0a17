"""Receipts: delivered and read positions, forward only, each change an event."""

import random
from typing import Any

import gevent

from tests.conftest import stored_events


def _receipt(client: Any, user: Any, cid: int, kind: str, seq: Any) -> Any:
    return client.post(
        f"/v1/conversations/{cid}/receipts",
        headers=user.headers,
        json={"type": kind, "seq": seq},
    )


def _receipts(chat: Any, user: Any, cursor: str) -> tuple[list[Any], str]:
    events, cursor = chat.drain(user, cursor)
    found = [
        (e["user_id"], e["receipt"], e["seq"])
        for e in stored_events(events)
        if e["type"] == "receipt"
    ]
    return found, cursor


def _member(client: Any, viewer: Any, cid: int, user_id: int) -> dict[str, Any]:
    conv = client.get(f"/v1/conversations/{cid}", headers=viewer.headers).get_json()
    return next(m for m in conv["conversation"]["members"] if m["user_id"] == user_id)


def test_sender_sees_delivered_then_read(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    for i in range(3):
        chat.send(alice, cid, f"m{i}")
    alice_cursor, bob_cursor = chat.head(alice), chat.head(bob)
    r = _receipt(client, bob, cid, "delivered", 3)
    assert r.status_code == 204 and r.data == b""
    r = _receipt(client, bob, cid, "read", 2)
    assert r.status_code == 204
    got, alice_cursor = _receipts(chat, alice, alice_cursor)
    assert got == [(bob.id, "delivered", 3), (bob.id, "read", 2)]
    # The actor's own stream has them too (its other devices follow).
    assert _receipts(chat, bob, bob_cursor)[0] == got
    receipt = next(
        e for e in stored_events(chat.drain(alice, "0")[0]) if e["type"] == "receipt"
    )
    assert set(receipt) == {
        "type",
        "id",
        "conversation_id",
        "user_id",
        "receipt",
        "seq",
    }
    assert receipt["conversation_id"] == cid
    assert _member(client, alice, cid, bob.id) | {"user_id": 0} == {
        "user_id": 0,
        "role": "member",
        "delivered_seq": 3,
        "read_seq": 2,
    }
    listed = client.get("/v1/conversations", headers=bob.headers).get_json()
    assert listed["conversations"][0]["read_seq"] == 2
    assert listed["conversations"][0]["unread_count"] == 1


def test_receipts_never_move_backward(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    for _ in range(5):
        chat.send(alice, cid)
    cursor = chat.head(alice)
    assert _receipt(client, bob, cid, "read", 4).status_code == 204
    for kind, seq in [("read", 2), ("read", 4), ("delivered", 3), ("delivered", 0)]:
        assert _receipt(client, bob, cid, kind, seq).status_code == 204
    member = _member(client, alice, cid, bob.id)
    assert (member["delivered_seq"], member["read_seq"]) == (4, 4)
    # Read implies delivered: one event each, and none for the stale receipts.
    got, cursor = _receipts(chat, alice, cursor)
    assert got == [(bob.id, "delivered", 4), (bob.id, "read", 4)]
    # Delivered may run ahead of read; read then catches up.
    assert _receipt(client, bob, cid, "delivered", 5).status_code == 204
    assert _receipt(client, bob, cid, "read", 5).status_code == 204
    got, _ = _receipts(chat, alice, cursor)
    assert got == [(bob.id, "delivered", 5), (bob.id, "read", 5)]


def test_receipt_validation(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob, mallory = make_user(), make_user(), make_user()
    cid = chat.direct(alice, bob)
    chat.send(alice, cid)
    r = _receipt(client, bob, cid, "read", 2)
    assert r.status_code == 422 and "seq" in r.get_json()["error"]["fields"]
    for kind, seq in [
        ("seen", 1),
        ("read", -1),
        ("read", "1"),
        ("read", 1.5),
        ("read", True),
    ]:
        assert _receipt(client, bob, cid, kind, seq).status_code == 422, (kind, seq)
    r = client.post(
        f"/v1/conversations/{cid}/receipts",
        headers=bob.headers,
        json={"type": "read", "seq": 1, "extra": 1},
    )
    assert r.status_code == 422
    assert _receipt(client, mallory, cid, "read", 1).status_code == 404
    assert _receipt(client, bob, 987654321, "read", 1).status_code == 404
    assert _member(client, alice, cid, bob.id)["read_seq"] == 0


def test_group_receipts_reach_every_member(
    client: Any, make_user: Any, chat: Any
) -> None:
    owner, a, b = make_user(), make_user(), make_user()
    cid = chat.group(owner, [a, b])
    chat.send(owner, cid)
    cursors = {u.id: chat.head(u) for u in (owner, a, b)}
    assert _receipt(client, a, cid, "read", 1).status_code == 204
    for user in (owner, a, b):
        got, _ = _receipts(chat, user, cursors[user.id])
        assert got == [(a.id, "delivered", 1), (a.id, "read", 1)]


def test_unread_counts_match_a_recount(client: Any, make_user: Any, chat: Any) -> None:
    users = [make_user() for _ in range(3)]
    cid = chat.group(users[0], users[1:])
    rng = random.Random(4)
    last_seq = 0
    for _ in range(40):
        actor = rng.choice(users)
        if rng.random() < 0.6:
            last_seq = chat.send(actor, cid)["seq"]
        else:
            seq = rng.randint(0, last_seq)
            kind = rng.choice(["delivered", "read"])
            assert _receipt(client, actor, cid, kind, seq).status_code == 204
    history = client.get(
        f"/v1/conversations/{cid}/messages?limit=200", headers=users[0].headers
    ).get_json()["messages"]
    assert len(history) == last_seq
    for user in users:
        listed = client.get("/v1/conversations", headers=user.headers).get_json()
        conv = next(c for c in listed["conversations"] if c["id"] == cid)
        read_seq = conv["read_seq"]
        assert conv["unread_count"] == sum(1 for m in history if m["seq"] > read_seq)
        member = _member(client, user, cid, user.id)
        assert member["read_seq"] == read_seq <= member["delivered_seq"]


def test_concurrent_receipts_only_move_forward(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    for _ in range(20):
        chat.send(alice, cid)
    cursor = chat.head(alice)
    seqs = list(range(1, 21))
    random.Random(7).shuffle(seqs)
    jobs = [gevent.spawn(_receipt, client, bob, cid, "read", s) for s in seqs]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert all(j.value.status_code == 204 for j in jobs)
    member = _member(client, alice, cid, bob.id)
    assert (member["read_seq"], member["delivered_seq"]) == (20, 20)
    got, _ = _receipts(chat, alice, cursor)
    for kind in ("delivered", "read"):
        moved = [s for _, k, s in got if k == kind]
        assert moved == sorted(set(moved)) and moved[-1] == 20
