"""Message requests (API.md): the `request` flag, accepting, the list filters,
and who sees whose presence, also when a block or an accept happens while
polls are held."""

from typing import Any

import gevent

from tests.conftest import settle_presence, stored_events, wait_until_held


def conversation(client: Any, user: Any, cid: int) -> dict[str, Any]:
    r = client.get(f"/v1/conversations/{cid}", headers=user.headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["conversation"]  # type: ignore[no-any-return]


def listed(client: Any, user: Any, query: str = "") -> list[int]:
    r = client.get(f"/v1/conversations{query}", headers=user.headers)
    assert r.status_code == 200, r.get_json()
    return [c["id"] for c in r.get_json()["conversations"]]


def presence_of(client: Any, viewer: Any, *ids: int) -> set[int]:
    r = client.get(
        "/v1/presence?user_ids=" + ",".join(map(str, ids)), headers=viewer.headers
    )
    assert r.status_code == 200
    return {int(k) for k in r.get_json()["presence"]}


def test_a_direct_conversation_is_a_request_for_the_peer_until_it_answers(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    assert conversation(client, alice, cid)["request"] is False
    assert conversation(client, bob, cid)["request"] is True
    chat.direct(bob, alice)  # opening it again does not accept it
    assert conversation(client, bob, cid)["request"] is True
    chat.send(alice, cid)  # the opener writing changes nothing for bob
    assert conversation(client, bob, cid)["request"] is True
    chat.send(bob, cid)  # bob answering accepts it
    assert conversation(client, bob, cid)["request"] is False


def test_accepting_a_request(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob, eve = make_user(), make_user(), make_user()
    cid = chat.direct(alice, bob)
    assert (
        client.post(f"/v1/conversations/{cid}/accept", headers=eve.headers).status_code
        == 404
    )
    r = client.post(f"/v1/conversations/{cid}/accept", headers=bob.headers)
    assert r.status_code == 204
    assert conversation(client, bob, cid)["request"] is False
    again = client.post(f"/v1/conversations/{cid}/accept", headers=bob.headers)
    assert again.status_code == 204


def test_groups_are_requests_for_those_added_by_others(
    client: Any, make_user: Any, chat: Any
) -> None:
    owner, bob, carol = make_user(), make_user(), make_user()
    group = chat.group(owner, [bob])
    assert conversation(client, owner, group)["request"] is False
    assert conversation(client, bob, group)["request"] is True
    r = client.post(
        f"/v1/conversations/{group}/members",
        headers=bob.headers,
        json={"user_id": carol.id},
    )
    assert r.status_code == 201
    assert conversation(client, carol, group)["request"] is True


def test_the_creation_event_says_request_for_each_recipient(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    alice_cursor, bob_cursor = chat.head(alice), chat.head(bob)
    cid = chat.direct(alice, bob)
    (mine,) = stored_events(chat.drain(alice, alice_cursor)[0])
    (theirs,) = stored_events(chat.drain(bob, bob_cursor)[0])
    assert mine["conversation"]["id"] == theirs["conversation"]["id"] == cid
    assert mine["conversation"]["request"] is False
    assert theirs["conversation"]["request"] is True
    assert theirs["conversation"]["muted_until"] is None
    assert theirs["conversation"]["archived"] is False


def test_the_list_filters_requests(client: Any, make_user: Any, chat: Any) -> None:
    me, friend, stranger = make_user(), make_user(), make_user()
    mine = chat.direct(me, friend)
    theirs = chat.direct(stranger, me)
    assert set(listed(client, me)) == {mine, theirs}
    assert listed(client, me, "?requests=only") == [theirs]
    assert listed(client, me, "?requests=exclude") == [mine]
    r = client.get("/v1/conversations?requests=maybe", headers=me.headers)
    assert r.status_code == 422 and "requests" in r.get_json()["error"]["fields"]
    client.post(f"/v1/conversations/{theirs}/accept", headers=me.headers)
    assert listed(client, me, "?requests=only") == []


def test_presence_of_a_requested_user_stays_hidden_until_it_accepts(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)  # bob's is a request
    chat.head(alice), chat.head(bob)
    assert presence_of(client, alice, bob.id) == set()  # bob has not accepted
    assert presence_of(client, bob, alice.id) == {alice.id}  # alice opened it
    client.post(f"/v1/conversations/{cid}/accept", headers=bob.headers)
    assert presence_of(client, alice, bob.id) == {bob.id}


def test_an_accept_while_a_poll_is_held_shows_the_presence_at_once(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    alice_cursor = chat.head(alice)
    chat.head(bob)  # bob is online, but alice may not see it
    settle_presence()
    waiting = gevent.spawn(chat.poll, alice, alice_cursor, 5)
    wait_until_held(alice.id)
    client.post(f"/v1/conversations/{cid}/accept", headers=bob.headers)
    events = waiting.get(timeout=6)["events"]
    seen = [(e["user_id"], e["status"]) for e in events if e["type"] == "presence"]
    assert seen == [(bob.id, "online")]


def test_a_requested_user_coming_online_is_not_announced(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    chat.direct(alice, bob)
    alice_cursor = chat.head(alice)
    settle_presence()
    waiting = gevent.spawn(chat.poll, alice, alice_cursor, 1)
    wait_until_held(alice.id)
    chat.head(bob)  # bob comes online
    settle_presence()
    assert [
        e for e in waiting.get(timeout=5)["events"] if e["type"] == "presence"
    ] == []


def test_a_block_while_a_poll_is_held_stops_presence_at_once(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    chat.direct(bob, alice)
    cid = chat.direct(alice, bob)
    chat.send(alice, cid)  # both sides accepted: each sees the other
    alice_cursor = chat.head(alice)
    settle_presence()
    assert presence_of(client, alice, bob.id) == {bob.id}
    waiting = gevent.spawn(chat.poll, alice, alice_cursor, 1.5)
    wait_until_held(alice.id)
    assert client.put(f"/v1/blocks/{alice.id}", headers=bob.headers).status_code == 204
    chat.head(bob)  # bob comes online while alice's poll is held
    settle_presence()
    assert [
        e for e in waiting.get(timeout=5)["events"] if e["type"] == "presence"
    ] == []
    assert presence_of(client, alice, bob.id) == set()
    # The blocker still sees the blocked user: the rule hides the blocker only.
    assert presence_of(client, bob, alice.id) == {alice.id}


def test_an_unblock_while_a_poll_is_held_shows_the_presence_again(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    chat.direct(bob, alice)
    client.put(f"/v1/blocks/{alice.id}", headers=bob.headers)
    chat.head(bob)
    alice_cursor = chat.head(alice)
    settle_presence()
    waiting = gevent.spawn(chat.poll, alice, alice_cursor, 5)
    wait_until_held(alice.id)
    client.delete(f"/v1/blocks/{alice.id}", headers=bob.headers)
    events = waiting.get(timeout=6)["events"]
    seen = [(e["user_id"], e["status"]) for e in events if e["type"] == "presence"]
    assert seen == [(bob.id, "online")]
