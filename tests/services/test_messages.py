"""Sending: ordered seqs, idempotent retries, history pages."""

import secrets
from typing import Any

import gevent


def test_send_returns_stored_message(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    r = client.post(
        f"/v1/conversations/{cid}/messages",
        headers=alice.headers,
        json={"client_msg_id": "abc-1", "body": "hello"},
    )
    assert r.status_code == 201
    msg = r.get_json()["message"]
    assert msg == {
        "conversation_id": cid,
        "seq": 1,
        "sender_id": alice.id,
        "client_msg_id": "abc-1",
        "body": "hello",
        "created_at": msg["created_at"],
        "reply_to": None,
        "edited_at": None,
        "deleted": False,
        "reactions": {},
        "attachments": [],
    }
    assert msg["created_at"].endswith("Z")


def test_retry_with_same_client_msg_id_returns_original(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cursor = chat.head(bob)
    url = f"/v1/conversations/{cid}/messages"
    first = client.post(
        url, headers=alice.headers, json={"client_msg_id": "same", "body": "once"}
    )
    again = client.post(
        url, headers=alice.headers, json={"client_msg_id": "same", "body": "once"}
    )
    assert first.status_code == 201 and again.status_code == 200
    assert first.get_json() == again.get_json()
    # Another sender's equal client_msg_id is a different message.
    other = client.post(
        url, headers=bob.headers, json={"client_msg_id": "same", "body": "mine"}
    )
    assert other.status_code == 201 and other.get_json()["message"]["seq"] == 2
    events, _ = chat.drain(bob, cursor)
    assert [e["message"]["seq"] for e in events if e["type"] == "message"] == [1, 2]


def test_concurrent_retries_store_one_message(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)

    def send() -> Any:
        return client.post(
            f"/v1/conversations/{cid}/messages",
            headers=alice.headers,
            json={"client_msg_id": "race", "body": "x"},
        )

    jobs = [gevent.spawn(send) for _ in range(6)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    statuses = sorted(j.value.status_code for j in jobs)
    assert statuses == [200] * 5 + [201]
    assert {j.value.get_json()["message"]["seq"] for j in jobs} == {1}
    nxt = chat.send(alice, cid, "after")
    assert nxt["seq"] == 2  # no seq was burnt by the refused duplicates


def test_retried_sends_write_no_message_body_to_the_database_log(
    client: Any, make_user: Any, chat: Any, services: Any
) -> None:
    # A retry raised a unique violation, logged by PostgreSQL with its statement,
    # and so with the body.
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    body = "secret-" + secrets.token_hex(8)

    def send() -> Any:
        return client.post(
            f"/v1/conversations/{cid}/messages",
            headers=alice.headers,
            json={"client_msg_id": "logged", "body": body},
        )

    assert send().status_code == 201
    assert send().status_code == 200
    jobs = [gevent.spawn(send) for _ in range(6)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert {j.value.status_code for j in jobs} == {200}
    assert chat.send(alice, cid, "next")["seq"] == 2
    log = services.pg.log_path.read_text(errors="replace")
    assert body not in log
    assert "messages_conversation_id_sender_id_client_msg_id_key" not in log


def test_message_validation(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    url = f"/v1/conversations/{cid}/messages"
    for body in [
        {"client_msg_id": "a", "body": ""},
        {"client_msg_id": "a", "body": "x" * 4001},
        {"client_msg_id": "", "body": "x"},
        {"client_msg_id": "has space", "body": "x"},
        {"client_msg_id": "a" * 65, "body": "x"},
        {"body": "x"},
        {"client_msg_id": "a", "body": "x", "extra": 1},
    ]:
        r = client.post(url, headers=alice.headers, json=body)
        assert r.status_code == 422, body
    r = client.post(
        url, headers=alice.headers, json={"client_msg_id": "ok", "body": "x" * 4000}
    )
    assert r.status_code == 201


def test_history_pages(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    for i in range(1, 8):
        chat.send(alice if i % 2 else bob, cid, f"m{i}")
    url = f"/v1/conversations/{cid}/messages"
    newest = client.get(f"{url}?limit=3", headers=bob.headers).get_json()
    assert [m["seq"] for m in newest["messages"]] == [5, 6, 7]
    assert newest["next_before"] == 5 and newest["next_after"] is None
    older = client.get(f"{url}?limit=3&before=5", headers=bob.headers).get_json()
    assert [m["seq"] for m in older["messages"]] == [2, 3, 4]
    assert older["next_before"] == 2 and older["next_after"] == 4
    oldest = client.get(f"{url}?limit=3&before=2", headers=bob.headers).get_json()
    assert [m["seq"] for m in oldest["messages"]] == [1]
    assert oldest["next_before"] is None and oldest["next_after"] == 1
    forward = client.get(f"{url}?limit=3&after=0", headers=bob.headers).get_json()
    assert [m["seq"] for m in forward["messages"]] == [1, 2, 3]
    assert forward["next_after"] == 3 and forward["next_before"] is None
    tail = client.get(f"{url}?after=7", headers=bob.headers).get_json()
    assert tail == {"messages": [], "next_before": None, "next_after": None}
    everything = client.get(url, headers=bob.headers).get_json()
    assert [m["body"] for m in everything["messages"]] == [f"m{i}" for i in range(1, 8)]
    for bad in (
        "limit=0",
        "limit=201",
        "before=abc",
        "before=0",
        "after=-1",
        "before=3&after=1",
    ):
        assert client.get(f"{url}?{bad}", headers=bob.headers).status_code == 422


def test_concurrent_senders_get_gapless_seqs(
    client: Any, make_user: Any, chat: Any
) -> None:
    """200 messages from 10 senders: seqs 1..200, each member sees each once, in
    order."""
    owner = make_user()
    others = [make_user() for _ in range(9)]
    senders = [owner, *others]
    cid = chat.group(owner, others)
    cursors = {u.id: chat.head(u) for u in senders}

    def send_many(user: Any, count: int) -> list[int]:
        return [chat.send(user, cid, f"{user.id}-{i}")["seq"] for i in range(count)]

    jobs = [gevent.spawn(send_many, u, 20) for u in senders]
    gevent.joinall(jobs, timeout=120, raise_error=True)
    seqs = sorted(s for j in jobs for s in j.value)
    assert seqs == list(range(1, 201))
    for user in senders:
        events, _ = chat.drain(user, cursors[user.id])
        got = [e["message"]["seq"] for e in events if e["type"] == "message"]
        assert got == list(range(1, 201)), user.id
        ids = [e["id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
