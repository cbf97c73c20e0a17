"""Group management: rename, add, remove, leave, delete, and their events."""

from typing import Any

import gevent

from messenger.services import fanout
from messenger.storage import events as event_store
from tests.conftest import stored_events


def _drain(chat: Any, user: Any, cursor: str) -> tuple[list[dict[str, Any]], str]:
    events, cursor = chat.drain(user, cursor)
    return stored_events(events), cursor


def _types(events: list[dict[str, Any]], conversation_id: int) -> list[str]:
    return [
        e["type"]
        for e in events
        if e.get("conversation_id") == conversation_id
        or (e.get("conversation") or {}).get("id") == conversation_id
        or (e.get("message") or {}).get("conversation_id") == conversation_id
    ]


def test_rename_reaches_every_member(client: Any, make_user: Any, chat: Any) -> None:
    owner, a, b = make_user(), make_user(), make_user()
    cid = chat.group(owner, [a, b], "Old")
    cursors = {u.id: chat.head(u) for u in (owner, a, b)}
    r = client.patch(
        f"/v1/conversations/{cid}", headers=a.headers, json={"title": "New"}
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["conversation"]["title"] == "New"
    for user in (owner, a, b):
        events, cursors[user.id] = _drain(chat, user, cursors[user.id])
        assert [e["type"] for e in events] == ["conversation_updated"]
        assert events[0]["conversation"]["title"] == "New"
        assert events[0]["conversation"]["id"] == cid
        got = client.get(f"/v1/conversations/{cid}", headers=user.headers)
        assert got.get_json()["conversation"]["title"] == "New"
    # The same title again changes nothing and announces nothing.
    r = client.patch(
        f"/v1/conversations/{cid}", headers=b.headers, json={"title": "New"}
    )
    assert r.status_code == 200
    assert _drain(chat, owner, cursors[owner.id])[0] == []


def test_rename_rules(client: Any, make_user: Any, chat: Any) -> None:
    owner, a, outsider = make_user(), make_user(), make_user()
    cid = chat.group(owner, [a])
    direct = chat.direct(owner, a)
    url = f"/v1/conversations/{cid}"
    for body in ({"title": ""}, {"title": "x" * 101}, {}, {"title": "t", "x": 1}):
        r = client.patch(url, headers=owner.headers, json=body)
        assert r.status_code == 422, body
    r = client.patch(url, headers=outsider.headers, json={"title": "t"})
    assert r.status_code == 404
    r = client.patch(
        f"/v1/conversations/{direct}", headers=owner.headers, json={"title": "t"}
    )
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"
    r = client.patch(url, headers=owner.headers, data="x", content_type="text/plain")
    assert r.status_code == 400


def test_any_member_adds_and_everyone_hears(
    client: Any, make_user: Any, chat: Any
) -> None:
    owner, a, newcomer = make_user(), make_user(), make_user()
    cid = chat.group(owner, [a])
    for i in range(3):
        chat.send(owner, cid, f"before {i}")
    cursors = {u.id: chat.head(u) for u in (owner, a, newcomer)}
    r = client.post(
        f"/v1/conversations/{cid}/members",
        headers=a.headers,
        json={"user_id": newcomer.id},
    )
    assert r.status_code == 201, r.get_json()
    members = {m["user_id"]: m for m in r.get_json()["conversation"]["members"]}
    assert members[newcomer.id]["role"] == "member"
    expected = {"conversation_id": cid, "user_id": newcomer.id, "by": a.id}
    for user in (owner, a, newcomer):
        events, _ = _drain(chat, user, cursors[user.id])
        assert [e["type"] for e in events] == ["member_added"]
        assert {k: events[0][k] for k in expected} == expected
    # The group is in the newcomer's list; its history is not unread for it.
    listed = client.get("/v1/conversations", headers=newcomer.headers).get_json()
    assert [c["id"] for c in listed["conversations"]] == [cid]
    assert listed["conversations"][0]["unread_count"] == 0
    history = client.get(f"/v1/conversations/{cid}/messages", headers=newcomer.headers)
    assert history.status_code == 200 and len(history.get_json()["messages"]) == 3
    # It receives what is sent from now on.
    chat.send(owner, cid, "welcome")
    events, _ = _drain(chat, newcomer, cursors[newcomer.id])
    assert [e["message"]["body"] for e in events if e["type"] == "message"] == [
        "welcome"
    ]


def test_add_rules(client: Any, make_user: Any, chat: Any) -> None:
    owner, a, outsider = make_user(), make_user(), make_user()
    cid = chat.group(owner, [a])
    direct = chat.direct(owner, a)
    url = f"/v1/conversations/{cid}/members"
    r = client.post(url, headers=owner.headers, json={"user_id": a.id})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "conflict"
    r = client.post(url, headers=owner.headers, json={"user_id": 987654321})
    assert r.status_code == 422 and "user_id" in r.get_json()["error"]["fields"]
    for body in ({}, {"user_id": "5"}, {"user_id": 0}, {"user_id": 1, "x": 2}):
        assert client.post(url, headers=owner.headers, json=body).status_code == 422
    r = client.post(url, headers=outsider.headers, json={"user_id": outsider.id})
    assert r.status_code == 404
    r = client.post(
        f"/v1/conversations/{direct}/members",
        headers=owner.headers,
        json={"user_id": outsider.id},
    )
    assert r.status_code == 403


def test_group_size_limit(client: Any, make_user: Any, chat: Any, shards: Any) -> None:
    owner, a, newcomer = make_user(), make_user(), make_user()
    cid = chat.group(owner, [a])
    # Fill the group to 500 members without registering 498 accounts.
    with shards.on_conversation(cid, "test_fill_group") as cur:
        cur.run(
            "INSERT INTO {s}.members (conversation_id, user_id, role) "
            "SELECT %s, g, 'member' FROM generate_series(%s, %s) AS g",
            (cid, 10**15, 10**15 + 497),
        )
    r = client.post(
        f"/v1/conversations/{cid}/members",
        headers=owner.headers,
        json={"user_id": newcomer.id},
    )
    assert r.status_code == 422, r.get_json()
    assert "500" in r.get_json()["error"]["fields"]["user_id"][0]
    # One leaves: there is room again.
    leave = client.delete(f"/v1/conversations/{cid}/members/{a.id}", headers=a.headers)
    assert leave.status_code == 204
    r = client.post(
        f"/v1/conversations/{cid}/members",
        headers=owner.headers,
        json={"user_id": newcomer.id},
    )
    assert r.status_code == 201


def test_removed_member_loses_access_and_hears_nothing_more(
    client: Any, make_user: Any, chat: Any
) -> None:
    owner, a, b = make_user(), make_user(), make_user()
    cid = chat.group(owner, [a, b])
    chat.send(owner, cid, "before")
    cursors = {u.id: chat.head(u) for u in (owner, a, b)}
    r = client.delete(f"/v1/conversations/{cid}/members/{b.id}", headers=a.headers)
    assert r.status_code == 403, "only the owner removes others"
    r = client.delete(f"/v1/conversations/{cid}/members/{b.id}", headers=owner.headers)
    assert r.status_code == 204
    expected = {"conversation_id": cid, "user_id": b.id, "by": owner.id}
    for user in (owner, a, b):
        events, cursors[user.id] = _drain(chat, user, cursors[user.id])
        assert [e["type"] for e in events] == ["member_removed"], user
        assert {k: events[0][k] for k in expected} == expected
    # At once: 404 everywhere, and the group left b's list.
    for method, url, body in [
        ("get", f"/v1/conversations/{cid}", None),
        ("get", f"/v1/conversations/{cid}/messages", None),
        (
            "post",
            f"/v1/conversations/{cid}/messages",
            {"client_msg_id": "x", "body": "y"},
        ),
        ("patch", f"/v1/conversations/{cid}", {"title": "mine"}),
        ("post", f"/v1/conversations/{cid}/members", {"user_id": b.id}),
        ("post", f"/v1/conversations/{cid}/receipts", {"type": "read", "seq": 1}),
        ("post", f"/v1/conversations/{cid}/typing", None),
    ]:
        r = getattr(client, method)(url, headers=b.headers, json=body)
        assert r.status_code == 404, (method, url, r.get_json())
    listed = client.get("/v1/conversations", headers=b.headers).get_json()
    assert cid not in [c["id"] for c in listed["conversations"]]
    # Nothing more of the group reaches b; the others carry on.
    chat.send(owner, cid, "after")
    client.patch(f"/v1/conversations/{cid}", headers=a.headers, json={"title": "T2"})
    assert _drain(chat, b, cursors[b.id])[0] == []
    events, _ = _drain(chat, a, cursors[a.id])
    assert [e["type"] for e in events] == ["message", "conversation_updated"]
    # Removing someone who is not a member: 404.
    r = client.delete(f"/v1/conversations/{cid}/members/{b.id}", headers=owner.headers)
    assert r.status_code == 404


def test_member_leaves(client: Any, make_user: Any, chat: Any) -> None:
    owner, a = make_user(), make_user()
    cid = chat.group(owner, [a])
    cursor = chat.head(owner)
    r = client.delete(f"/v1/conversations/{cid}/members/{a.id}", headers=a.headers)
    assert r.status_code == 204
    events, _ = _drain(chat, owner, cursor)
    assert [(e["type"], e["user_id"], e["by"]) for e in events] == [
        ("member_removed", a.id, a.id)
    ]
    conv = client.get(f"/v1/conversations/{cid}", headers=owner.headers).get_json()
    assert [m["user_id"] for m in conv["conversation"]["members"]] == [owner.id]


def test_owner_leaving_hands_over_to_longest_standing_member(
    client: Any, make_user: Any, chat: Any
) -> None:
    owner, first, second, late = make_user(), make_user(), make_user(), make_user()
    cid = chat.group(owner, [first, second])
    r = client.post(
        f"/v1/conversations/{cid}/members",
        headers=second.headers,
        json={"user_id": late.id},
    )
    assert r.status_code == 201
    cursor = chat.head(late)
    r = client.delete(
        f"/v1/conversations/{cid}/members/{owner.id}", headers=owner.headers
    )
    assert r.status_code == 204
    conv = client.get(f"/v1/conversations/{cid}", headers=late.headers).get_json()[
        "conversation"
    ]
    # first joined right before second (same statement, row by row).
    heir = first.id
    assert conv["owner_id"] == heir
    roles = {m["user_id"]: m["role"] for m in conv["members"]}
    assert roles == {first.id: "member", second.id: "member", late.id: "member"} | {
        heir: "owner"
    }
    events, _ = _drain(chat, late, cursor)
    assert [e["type"] for e in events] == ["member_removed", "conversation_updated"]
    assert events[1]["conversation"]["owner_id"] == heir
    # The heir now has the owner's powers.
    r = client.delete(
        f"/v1/conversations/{cid}/members/{second.id}", headers=first.headers
    )
    assert r.status_code == 204


def test_last_member_leaving_deletes_the_group(
    client: Any, make_user: Any, chat: Any
) -> None:
    owner = make_user()
    cid = chat.group(owner, [])
    chat.send(owner, cid, "alone")
    cursor = chat.head(owner)
    r = client.delete(
        f"/v1/conversations/{cid}/members/{owner.id}", headers=owner.headers
    )
    assert r.status_code == 204
    events, _ = _drain(chat, owner, cursor)
    assert [e["type"] for e in events] == ["member_removed"]
    assert (
        client.get(f"/v1/conversations/{cid}", headers=owner.headers).status_code == 404
    )


def test_delete_group(client: Any, make_user: Any, chat: Any) -> None:
    owner, a, outsider = make_user(), make_user(), make_user()
    cid = chat.group(owner, [a])
    chat.send(a, cid, "soon gone")
    cursors = {u.id: chat.head(u) for u in (owner, a)}
    assert (
        client.delete(f"/v1/conversations/{cid}", headers=a.headers).status_code == 403
    )
    r = client.delete(f"/v1/conversations/{cid}", headers=outsider.headers)
    assert r.status_code == 404
    direct = chat.direct(owner, a)
    r = client.delete(f"/v1/conversations/{direct}", headers=owner.headers)
    assert r.status_code == 403
    cursors = {u.id: chat.head(u) for u in (owner, a)}
    r = client.delete(f"/v1/conversations/{cid}", headers=owner.headers)
    assert r.status_code == 204
    for user in (owner, a):
        events, _ = _drain(chat, user, cursors[user.id])
        assert events == [
            {
                "type": "conversation_deleted",
                "id": events[0]["id"],
                "conversation_id": cid,
            }
        ]
        for url in (f"/v1/conversations/{cid}", f"/v1/conversations/{cid}/messages"):
            assert client.get(url, headers=user.headers).status_code == 404
        listed = client.get("/v1/conversations", headers=user.headers).get_json()
        assert cid not in [c["id"] for c in listed["conversations"]]
    r = client.post(
        f"/v1/conversations/{cid}/messages",
        headers=owner.headers,
        json={"client_msg_id": "late", "body": "anyone?"},
    )
    assert r.status_code == 404
    assert (
        client.delete(f"/v1/conversations/{cid}", headers=owner.headers).status_code
        == 404
    )


def test_stale_fanout_never_reaches_a_removed_member(
    client: Any, make_user: Any, chat: Any, shards: Any
) -> None:
    """A change whose recipients were read before a removal committed, but queued
    after it, must not reach the removed user (the send statement can do this)."""
    owner, a = make_user(), make_user()
    cid = chat.group(owner, [a])
    r = client.delete(f"/v1/conversations/{cid}/members/{a.id}", headers=owner.headers)
    assert r.status_code == 204
    cursor = chat.head(a)
    owner_cursor = chat.head(owner)
    with shards.on_conversation(cid, "test_stale_outbox") as cur:
        event_store.insert_outbox(
            cur,
            cid,
            "receipt",
            [owner.id, a.id],
            {
                "event": {
                    "conversation_id": cid,
                    "user_id": owner.id,
                    "receipt": "read",
                    "seq": 0,
                }
            },
        )
    fanout.fan_out(cid)
    assert _drain(chat, a, cursor)[0] == []
    assert [e["type"] for e in _drain(chat, owner, owner_cursor)[0]] == ["receipt"]


def test_removal_racing_sends_leaves_nothing_after_member_removed(
    client: Any, make_user: Any, chat: Any
) -> None:
    owner, a, b = make_user(), make_user(), make_user()
    cid = chat.group(owner, [a, b])
    cursor = chat.head(b)
    a_cursor = chat.head(a)

    def send_many(sender: Any) -> None:
        for i in range(15):
            r = client.post(
                f"/v1/conversations/{cid}/messages",
                headers=sender.headers,
                json={"client_msg_id": f"m{sender.id}-{i}", "body": "x"},
            )
            assert r.status_code in (201, 404)

    senders = [gevent.spawn(send_many, owner), gevent.spawn(send_many, a)]
    gevent.sleep(0.01)
    r = client.delete(f"/v1/conversations/{cid}/members/{b.id}", headers=owner.headers)
    assert r.status_code == 204
    gevent.joinall(senders, timeout=30, raise_error=True)
    events, _ = _drain(chat, b, cursor)
    types = _types(events, cid)
    assert types.count("member_removed") == 1
    assert types[-1] == "member_removed"
    # The others got every message, in seq order.
    events, _ = _drain(chat, a, a_cursor)
    seqs = [e["message"]["seq"] for e in events if e["type"] == "message"]
    assert seqs == list(range(1, 31))
