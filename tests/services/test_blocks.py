"""Blocking (API.md): stored on both users' shards, checked locally; what a
blocked user can no longer do, and what still works."""

import secrets
from typing import Any

import gevent
import pytest

from messenger import runtime
from messenger.services import blocks
from tests.conftest import settle_presence, wait_until_held


def block(client: Any, blocker: Any, blocked_id: int) -> Any:
    return client.put(f"/v1/blocks/{blocked_id}", headers=blocker.headers)


def open_direct(client: Any, user: Any, peer_id: int) -> Any:
    return client.post(
        "/v1/conversations",
        headers=user.headers,
        json={"kind": "direct", "user_id": peer_id},
    )


def send(client: Any, user: Any, cid: int, body: str = "hi") -> Any:
    return client.post(
        f"/v1/conversations/{cid}/messages",
        headers=user.headers,
        json={"client_msg_id": secrets.token_hex(6), "body": body},
    )


def assert_forbidden(r: Any) -> None:
    assert r.status_code == 403, r.get_json()
    assert r.get_json()["error"]["code"] == "forbidden"


def test_block_unblock_and_list(client: Any, make_user: Any) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    assert block(client, alice, bob.id).status_code == 204
    assert block(client, alice, bob.id).status_code == 204  # again: the same
    assert block(client, alice, carol.id).status_code == 204
    listed = client.get("/v1/blocks", headers=alice.headers).get_json()["users"]
    assert [u["id"] for u in listed] == [carol.id, bob.id]  # newest first
    assert set(listed[0]) == {"id", "handle", "display_name", "created_at"}
    assert client.get("/v1/blocks", headers=bob.headers).get_json() == {"users": []}
    assert (
        client.delete(f"/v1/blocks/{bob.id}", headers=alice.headers).status_code == 204
    )
    assert (
        client.delete(f"/v1/blocks/{bob.id}", headers=alice.headers).status_code == 204
    )
    listed = client.get("/v1/blocks", headers=alice.headers).get_json()["users"]
    assert [u["id"] for u in listed] == [carol.id]


def test_block_stores_a_row_on_each_users_shard(make_user: Any, client: Any) -> None:
    router = runtime.get().router
    alice, bob = make_user(), make_user()
    while router.schema_of(alice.id) == router.schema_of(bob.id):
        bob = make_user()
    block(client, alice, bob.id)
    for user in (alice, bob):
        with router.on_user(user.id, "test_blocks") as cur:
            rows = cur.run(
                "SELECT blocker_id, blocked_id FROM {s}.blocks"
                " WHERE blocker_id = %s AND blocked_id = %s",
                (alice.id, bob.id),
            ).fetchall()
        assert rows == [(alice.id, bob.id)]


def test_blocking_oneself_or_nobody(client: Any, make_user: Any) -> None:
    alice = make_user()
    r = block(client, alice, alice.id)
    assert r.status_code == 422 and "user_id" in r.get_json()["error"]["fields"]
    r = block(client, alice, 987654321)
    assert r.status_code == 404
    assert block(client, alice, 2**63).status_code == 404


def test_a_blocked_user_cannot_open_send_name_or_add(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = chat.direct(bob, alice)
    group = chat.group(bob, [carol])
    block(client, alice, bob.id)  # alice blocks bob
    assert_forbidden(open_direct(client, bob, alice.id))
    assert_forbidden(send(client, bob, cid))
    r = client.post(
        "/v1/conversations",
        headers=bob.headers,
        json={"kind": "group", "title": "again", "member_ids": [carol.id, alice.id]},
    )
    assert_forbidden(r)
    r = client.post(
        f"/v1/conversations/{group}/members",
        headers=bob.headers,
        json={"user_id": alice.id},
    )
    assert_forbidden(r)
    # The blocker is not restricted; nor is anybody else.
    assert open_direct(client, alice, bob.id).status_code == 200
    assert send(client, alice, cid).status_code == 201
    assert send(client, carol, group).status_code == 201
    # Unblocked: everything works again.
    client.delete(f"/v1/blocks/{bob.id}", headers=alice.headers)
    assert send(client, bob, cid).status_code == 201
    r = client.post(
        f"/v1/conversations/{group}/members",
        headers=bob.headers,
        json={"user_id": alice.id},
    )
    assert r.status_code == 201


def test_messages_in_a_shared_group_still_reach_both(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    group = chat.group(alice, [bob])
    alice_cursor, bob_cursor = chat.head(alice), chat.head(bob)
    block(client, alice, bob.id)
    assert send(client, bob, group, "from bob").status_code == 201
    assert send(client, alice, group, "from alice").status_code == 201
    got_alice, _ = chat.drain(alice, alice_cursor)
    got_bob, _ = chat.drain(bob, bob_cursor)
    bodies = ["from bob", "from alice"]
    assert [e["message"]["body"] for e in got_alice if e["type"] == "message"] == bodies
    assert [e["message"]["body"] for e in got_bob if e["type"] == "message"] == bodies


def test_a_block_reaches_a_send_on_every_worker_at_once(
    client: Any, make_user: Any, chat: Any
) -> None:
    """The send path caches "who blocked me"; a block drops that entry."""
    alice, bob = make_user(), make_user()
    cid = chat.direct(bob, alice)
    assert send(client, bob, cid).status_code == 201  # bob's blockers now cached
    assert blocks.blockers_cache.get(bob.id) == frozenset()
    block(client, alice, bob.id)
    assert_forbidden(send(client, bob, cid))


def test_the_blocked_user_gets_no_typing_of_the_blocker(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    group = chat.group(alice, [bob])
    block(client, alice, bob.id)
    bob_cursor = chat.head(bob)
    alice_cursor = chat.head(alice)
    settle_presence()
    waiting = gevent.spawn(chat.poll, bob, bob_cursor, 1)
    wait_until_held(bob.id)
    assert (
        client.post(
            f"/v1/conversations/{group}/typing", headers=alice.headers
        ).status_code
        == 204
    )
    assert [e for e in waiting.get(timeout=5)["events"] if e["type"] == "typing"] == []
    # The other way round typing still goes (only the blocker's is hidden).
    waiting = gevent.spawn(chat.poll, alice, alice_cursor, 5)
    wait_until_held(alice.id)
    client.post(f"/v1/conversations/{group}/typing", headers=bob.headers)
    events = waiting.get(timeout=6)["events"]
    assert [e["user_id"] for e in events if e["type"] == "typing"] == [bob.id]


@pytest.mark.parametrize("q", ["exact", "prefix"])
def test_people_search_leaves_out_users_who_blocked_the_caller(
    client: Any, make_user: Any, q: str
) -> None:
    alice, bob = make_user("srchblk"), make_user()
    query = alice.handle if q == "exact" else alice.handle[:8]
    found = client.get(f"/v1/users?q={query}", headers=bob.headers).get_json()["users"]
    assert alice.id in [u["id"] for u in found]
    block(client, alice, bob.id)
    found = client.get(f"/v1/users?q={query}", headers=bob.headers).get_json()["users"]
    assert alice.id not in [u["id"] for u in found]
    # Blocking someone does not hide them from the blocker.
    found = client.get(f"/v1/users?q={bob.handle}", headers=alice.headers).get_json()
    assert [u["id"] for u in found["users"]] == [bob.id]
