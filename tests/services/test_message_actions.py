"""Replies, edits, deletes and reactions (API.md, second release): the rules,
one message_updated event per real change to every member, and history, search
and every member's mailbox copy kept consistent, across shards and databases."""

import secrets
from typing import Any

import pytest

from messenger import runtime
from tests import conftest
from tests.conftest import stored_events

User = conftest.TestUser


def url(cid: int, seq: int, tail: str = "") -> str:
    return f"/v1/conversations/{cid}/messages/{seq}{tail}"


def updates(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e["message"] for e in stored_events(events) if e["type"] == "message_updated"
    ]


def history(client: Any, user: User, cid: int) -> dict[int, dict[str, Any]]:
    r = client.get(f"/v1/conversations/{cid}/messages?limit=200", headers=user.headers)
    assert r.status_code == 200, r.get_json()
    return {m["seq"]: m for m in r.get_json()["messages"]}


def search(client: Any, user: User, q: str) -> list[tuple[int, int]]:
    r = client.get(f"/v1/search?q={q}", headers=user.headers)
    assert r.status_code == 200, r.get_json()
    return [(m["conversation_id"], m["seq"]) for m in r.get_json()["messages"]]


def send(client: Any, user: User, cid: int, **body: Any) -> Any:
    body.setdefault("client_msg_id", secrets.token_hex(6))
    return client.post(
        f"/v1/conversations/{cid}/messages", headers=user.headers, json=body
    )


# ---- replies -----------------------------------------------------------------------


def test_reply_to_names_a_seq_of_the_conversation(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    chat.send(alice, cid, "lunch?")
    r = send(client, bob, cid, body="yes", reply_to=1)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["message"]["reply_to"] == 1
    assert history(client, alice, cid)[2]["reply_to"] == 1
    # Beyond the last message (2 now), zero, a string: 422 naming reply_to.
    for bad in (3, 0, "1"):
        r = send(client, bob, cid, body="no", reply_to=bad)
        assert r.status_code == 422, (bad, r.get_json())
        assert "reply_to" in r.get_json()["error"]["fields"]
    assert set(history(client, alice, cid)) == {1, 2}
    # null is no reply.
    r = send(client, bob, cid, body="plain", reply_to=None)
    assert r.status_code == 201 and r.get_json()["message"]["reply_to"] is None


def test_a_body_is_required_without_attachments(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    for body in ({}, {"body": ""}, {"body": "", "attachment_ids": []}):
        r = send(client, alice, cid, **body)
        assert r.status_code == 422, r.get_json()
        assert "body" in r.get_json()["error"]["fields"]
    r = send(client, alice, cid, body="x" * 4001)
    assert r.status_code == 422


def test_a_non_member_replying_gets_404_not_a_seq_hint(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob, eve = make_user(), make_user(), make_user()
    cid = chat.direct(alice, bob)
    chat.send(alice, cid)
    for reply_to in (1, 99):
        r = send(client, eve, cid, body="hi", reply_to=reply_to)
        assert r.status_code == 404


# ---- edits -------------------------------------------------------------------------


def test_edit_sets_body_and_edited_at_and_tells_every_member_once(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = chat.group(alice, [bob, carol])
    chat.send(alice, cid, "teh plan")
    cursors = {u.id: chat.head(u) for u in (alice, bob, carol)}
    r = client.patch(url(cid, 1), headers=alice.headers, json={"body": "the plan"})
    assert r.status_code == 200, r.get_json()
    edited = r.get_json()["message"]
    assert edited["body"] == "the plan" and edited["edited_at"].endswith("Z")
    assert edited["seq"] == 1 and not edited["deleted"]
    for user in (alice, bob, carol):  # the actor included
        events, cursors[user.id] = chat.drain(user, cursors[user.id])
        assert updates(events) == [edited]
        assert history(client, user, cid)[1] == edited
    # The same body again changes nothing and tells no one.
    again = client.patch(url(cid, 1), headers=alice.headers, json={"body": "the plan"})
    assert again.status_code == 200 and again.get_json()["message"] == edited
    for user in (alice, bob, carol):
        events, _ = chat.drain(user, cursors[user.id])
        assert updates(events) == []


def test_edit_rules(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob, eve = make_user(), make_user(), make_user()
    cid = chat.group(alice, [bob])
    chat.send(alice, cid, "mine")
    chat.send(bob, cid, "his")
    cursor = chat.head(bob)
    # Someone else's message: 403; a stranger: 404; no such seq: 404.
    r = client.patch(url(cid, 2), headers=alice.headers, json={"body": "hacked"})
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "forbidden"
    r = client.patch(url(cid, 1), headers=eve.headers, json={"body": "hacked"})
    assert r.status_code == 404
    r = client.patch(url(cid, 3), headers=alice.headers, json={"body": "later"})
    assert r.status_code == 404
    # An empty body on a message without attachments; unknown fields; no body.
    for body in ({"body": ""}, {"body": "x", "extra": 1}, {}):
        r = client.patch(url(cid, 1), headers=alice.headers, json=body)
        assert r.status_code == 422, body
    r = client.patch(url(cid, 1), headers=alice.headers, data="not json")
    assert r.status_code == 400
    # A deleted message: 409.
    assert client.delete(url(cid, 1), headers=alice.headers).status_code == 204
    r = client.patch(url(cid, 1), headers=alice.headers, json={"body": "back"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "conflict"
    # Nothing of the refused edits reached anyone; the texts are as they were.
    events, _ = chat.drain(bob, cursor)
    assert [m["deleted"] for m in updates(events)] == [True]
    assert history(client, bob, cid)[2]["body"] == "his"


def test_a_removed_member_can_no_longer_edit_or_hear_of_edits(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.group(alice, [bob])
    chat.send(bob, cid, "before I go")
    chat.send(alice, cid, "stay")
    r = client.delete(
        f"/v1/conversations/{cid}/members/{bob.id}", headers=alice.headers
    )
    assert r.status_code == 204
    cursor = chat.head(bob)
    r = client.patch(url(cid, 1), headers=bob.headers, json={"body": "edited"})
    assert r.status_code == 404
    r = client.put(url(cid, 2, "/reaction"), headers=bob.headers, json={"emoji": "👍"})
    assert r.status_code == 404
    r = client.patch(url(cid, 2), headers=alice.headers, json={"body": "stay!"})
    assert r.status_code == 200
    events, _ = chat.drain(bob, cursor)
    assert events == []


# ---- deletes ---------------------------------------------------------------------


def test_delete_leaves_a_tombstone_that_keeps_its_seq(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    chat.send(alice, cid, "first")
    r = send(client, alice, cid, body="oops secret", reply_to=1)
    assert r.status_code == 201
    chat.send(bob, cid, "third")
    client.put(url(cid, 2, "/reaction"), headers=bob.headers, json={"emoji": "😮"})
    cursor = chat.head(bob)
    r = client.delete(url(cid, 2), headers=alice.headers)
    assert r.status_code == 204 and r.data == b""
    tomb = history(client, bob, cid)[2]
    assert tomb["deleted"] is True
    assert (tomb["body"], tomb["reply_to"], tomb["reactions"], tomb["attachments"]) == (
        "",
        None,
        {},
        [],
    )
    assert sorted(history(client, bob, cid)) == [1, 2, 3]  # no gap
    events, cursor = chat.drain(bob, cursor)
    assert updates(events) == [tomb]
    # Deleting again: 204, and nothing changes or is told.
    assert client.delete(url(cid, 2), headers=alice.headers).status_code == 204
    events, _ = chat.drain(bob, cursor)
    assert updates(events) == []
    # A reaction on it: 409; removing one: nothing to remove.
    r = client.put(url(cid, 2, "/reaction"), headers=bob.headers, json={"emoji": "👍"})
    assert r.status_code == 409
    r = client.delete(url(cid, 2, "/reaction"), headers=bob.headers)
    assert r.status_code == 200 and r.get_json()["message"] == tomb
    # The conversation list shows the tombstone where it is the last message.
    assert client.delete(url(cid, 3), headers=bob.headers).status_code == 204
    r = client.get(f"/v1/conversations/{cid}", headers=alice.headers)
    assert r.get_json()["conversation"]["last_message"]["deleted"] is True


def test_who_may_delete(client: Any, make_user: Any, chat: Any) -> None:
    owner, member, other = make_user(), make_user(), make_user()
    gid = chat.group(owner, [member, other])
    chat.send(member, gid, "member's")
    chat.send(owner, gid, "owner's")
    chat.send(member, gid, "member's again")
    # Another member: 403; the owner deletes a member's message; the sender its own.
    assert client.delete(url(gid, 1), headers=other.headers).status_code == 403
    assert client.delete(url(gid, 2), headers=member.headers).status_code == 403
    assert client.delete(url(gid, 1), headers=owner.headers).status_code == 204
    assert client.delete(url(gid, 3), headers=member.headers).status_code == 204
    assert client.delete(url(gid, 9), headers=owner.headers).status_code == 404
    # In a direct conversation nobody owns the other's messages.
    did = chat.direct(owner, member)
    chat.send(member, did, "direct")
    assert client.delete(url(did, 1), headers=owner.headers).status_code == 403
    assert history(client, owner, did)[1]["deleted"] is False


def test_retry_of_a_send_answers_the_message_as_it_is_now(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    first = send(client, alice, cid, client_msg_id="c-1", body="draft")
    assert first.status_code == 201
    client.patch(url(cid, 1), headers=alice.headers, json={"body": "final"})
    again = send(client, alice, cid, client_msg_id="c-1", body="draft")
    assert again.status_code == 200
    assert again.get_json()["message"]["body"] == "final"
    assert again.get_json()["message"]["edited_at"] is not None
    client.delete(url(cid, 1), headers=alice.headers)
    # Also through the path that checks reply_to first.
    again = send(client, alice, cid, client_msg_id="c-1", body="draft", reply_to=1)
    assert again.status_code == 200
    assert again.get_json()["message"]["deleted"] is True
    assert sorted(history(client, bob, cid)) == [1]


# ---- reactions -----------------------------------------------------------------------


def test_reactions_one_per_member_replaced_and_removed(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = chat.group(alice, [bob, carol])
    chat.send(alice, cid, "party")
    cursor = chat.head(alice)

    def react(user: User, emoji: str) -> dict[str, Any]:
        r = client.put(
            url(cid, 1, "/reaction"), headers=user.headers, json={"emoji": emoji}
        )
        assert r.status_code == 200, r.get_json()
        return r.get_json()["message"]["reactions"]  # type: ignore[no-any-return]

    assert react(carol, "👍") == {"👍": [carol.id]}
    assert react(bob, "👍") == {"👍": sorted([bob.id, carol.id])}
    assert react(bob, "🎉") == {"👍": [carol.id], "🎉": [bob.id]}
    assert react(bob, "🎉") == {"👍": [carol.id], "🎉": [bob.id]}  # no change
    family = "👨‍👩‍👧"  # one emoji of five code points
    assert react(alice, family)[family] == [alice.id]
    r = client.delete(url(cid, 1, "/reaction"), headers=carol.headers)
    assert r.get_json()["message"]["reactions"] == {"🎉": [bob.id], family: [alice.id]}
    r = client.delete(url(cid, 1, "/reaction"), headers=carol.headers)  # none left
    assert r.status_code == 200
    events, _ = chat.drain(alice, cursor)
    # One event per real change: 3 sets, 1 replacement... 5 in all, not 7.
    assert len(updates(events)) == 5
    assert updates(events)[-1]["reactions"] == {"🎉": [bob.id], family: [alice.id]}


@pytest.mark.parametrize(
    "emoji", ["", "a b", "👍\n", "\u0007", "x" * 17, " ", 5, None, "\ufeff"]
)
def test_bad_emoji_is_422(client: Any, make_user: Any, chat: Any, emoji: Any) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    chat.send(alice, cid)
    r = client.put(url(cid, 1, "/reaction"), headers=bob.headers, json={"emoji": emoji})
    assert r.status_code == 422, r.get_json()
    assert "emoji" in r.get_json()["error"]["fields"]


# ---- search and mailboxes across shards and databases ------------------------------


def _members_across_databases(make_user: Any) -> list[User]:
    """Users whose shards lie in both physical databases (tests run 8 shards on
    two), so a group of them fans out through the outbox to another database."""
    router = runtime.get().router
    users: list[User] = []
    for _ in range(40):
        users.append(make_user())
        dsns = {router.dsn_of(u.id) for u in users}
        if len(dsns) == 2 and len(users) >= 4:
            return users
    raise AssertionError("could not place users on both databases")


def test_edits_and_deletes_reach_every_mailbox_on_every_database(
    client: Any, make_user: Any, chat: Any
) -> None:
    users = _members_across_databases(make_user)
    owner, *others = users
    router = runtime.get().router
    cid = chat.group(owner, others)
    assert {router.dsn_of(u.id) for u in users} - {router.dsn_of(cid)}
    word = "zeppelin" + secrets.token_hex(3)
    chat.send(owner, cid, f"the {word} lands")
    chat.send(owner, cid, f"the {word} again")
    cursors = {u.id: chat.head(u) for u in users}
    r = client.patch(url(cid, 1), headers=owner.headers, json={"body": "the balloon"})
    assert r.status_code == 200
    assert client.delete(url(cid, 2), headers=owner.headers).status_code == 204
    r = client.put(
        url(cid, 1, "/reaction"), headers=others[-1].headers, json={"emoji": "🎈"}
    )
    assert r.status_code == 200
    final = r.get_json()["message"]
    for user in users:
        assert search(client, user, word) == []  # old text and deleted text gone
        assert search(client, user, "balloon") == [(cid, 1)]
        events, _ = chat.drain(user, cursors[user.id])
        got = updates(events)
        assert [m["seq"] for m in got] == [1, 2, 1], user.id
        assert got[-1] == final
        # The message events of a catch-up read the mailbox copy: as it is now.
        whole, _ = chat.drain(user, "0")
        copies = {
            e["message"]["seq"]: e["message"]
            for e in stored_events(whole)
            if e["type"] == "message"
        }
        assert copies[1] == final and copies[2]["deleted"] is True
        listed = client.get("/v1/conversations", headers=user.headers).get_json()
        [conv] = [c for c in listed["conversations"] if c["id"] == cid]
        assert conv["last_message"]["deleted"] is True


def test_edits_and_reactions_are_rate_limited_per_user(
    client: Any, make_user: Any, chat: Any, override_settings: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    chat.send(alice, cid)
    override_settings(rate_limits="edit=2/60s,reaction=2/60s")
    for n in range(2):
        r = client.patch(url(cid, 1), headers=alice.headers, json={"body": f"v{n}"})
        assert r.status_code == 200
        r = client.put(
            url(cid, 1, "/reaction"), headers=alice.headers, json={"emoji": "👍👎"[n]}
        )
        assert r.status_code == 200
    for r in (
        client.patch(url(cid, 1), headers=alice.headers, json={"body": "v3"}),
        client.delete(url(cid, 1), headers=alice.headers),
        client.put(
            url(cid, 1, "/reaction"), headers=alice.headers, json={"emoji": "🎉"}
        ),
        client.delete(url(cid, 1, "/reaction"), headers=alice.headers),
    ):
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    # Bob has his own budget; the refused changes were not made.
    r = client.put(url(cid, 1, "/reaction"), headers=bob.headers, json={"emoji": "🎉"})
    assert r.status_code == 200
    assert r.get_json()["message"]["body"] == "v1"
    assert r.get_json()["message"]["reactions"] == {"🎉": [bob.id], "👎": [alice.id]}
