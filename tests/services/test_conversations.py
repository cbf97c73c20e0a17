"""Direct and group conversations, listing, and what non-members see."""

import secrets
from typing import Any

import gevent


def test_direct_is_get_or_create(client: Any, make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    first = client.post(
        "/v1/conversations",
        headers=alice.headers,
        json={"kind": "direct", "user_id": bob.id},
    )
    assert first.status_code == 201
    again = client.post(
        "/v1/conversations",
        headers=bob.headers,
        json={"kind": "direct", "user_id": alice.id},
    )
    assert again.status_code == 200
    assert (
        again.get_json()["conversation"]["id"] == first.get_json()["conversation"]["id"]
    )
    conv = first.get_json()["conversation"]
    assert conv["kind"] == "direct" and conv["title"] is None
    assert sorted(m["user_id"] for m in conv["members"]) == sorted([alice.id, bob.id])
    assert conv["last_seq"] == 0 and conv["last_message"] is None


def test_concurrent_direct_creates_agree(client: Any, make_user: Any) -> None:
    alice, bob = make_user(), make_user()

    def create(a: Any, b: Any) -> Any:
        return client.post(
            "/v1/conversations",
            headers=a.headers,
            json={"kind": "direct", "user_id": b.id},
        )

    jobs = [
        gevent.spawn(create, alice, bob) if i % 2 else gevent.spawn(create, bob, alice)
        for i in range(8)
    ]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    ids = {j.value.get_json()["conversation"]["id"] for j in jobs}
    statuses = sorted(j.value.status_code for j in jobs)
    assert len(ids) == 1
    assert statuses.count(201) == 1 and statuses.count(200) == 7


def test_direct_with_self_or_unknown_is_422(client: Any, make_user: Any) -> None:
    alice = make_user()
    for user_id in (alice.id, 987654321):
        r = client.post(
            "/v1/conversations",
            headers=alice.headers,
            json={"kind": "direct", "user_id": user_id},
        )
        assert r.status_code == 422
        assert "user_id" in r.get_json()["error"]["fields"]


def test_group_creation(client: Any, make_user: Any) -> None:
    owner, a, b = make_user(), make_user(), make_user()
    r = client.post(
        "/v1/conversations",
        headers=owner.headers,
        json={"kind": "group", "title": "Trip", "member_ids": [a.id, b.id]},
    )
    assert r.status_code == 201
    conv = r.get_json()["conversation"]
    assert conv["kind"] == "group" and conv["title"] == "Trip"
    assert conv["owner_id"] == owner.id
    roles = {m["user_id"]: m["role"] for m in conv["members"]}
    assert roles == {owner.id: "owner", a.id: "member", b.id: "member"}


def test_group_validation(client: Any, make_user: Any) -> None:
    owner = make_user()
    bad = [
        {"kind": "group", "member_ids": []},
        {"kind": "group", "title": "", "member_ids": []},
        {"kind": "group", "title": "x" * 101},
        {"kind": "group", "title": "t", "member_ids": [987654321]},
        {"kind": "group", "title": "t", "member_ids": list(range(1, 502))},
        {"kind": "channel", "title": "t"},
        {"kind": "direct"},
        {"kind": "direct", "user_id": "12"},
        {"kind": "direct", "user_id": True},
    ]
    for body in bad:
        r = client.post("/v1/conversations", headers=owner.headers, json=body)
        assert r.status_code == 422, (body, r.get_json())


def test_list_orders_by_activity_with_unread(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    c1 = chat.direct(alice, bob)
    c2 = chat.direct(alice, carol)
    chat.send(bob, c1, "one")
    chat.send(carol, c2, "two")
    chat.send(carol, c2, "three")
    r = client.get("/v1/conversations", headers=alice.headers)
    assert r.status_code == 200
    listed = r.get_json()["conversations"]
    assert [c["id"] for c in listed] == [c2, c1]
    assert listed[0]["last_message"]["body"] == "three"
    assert listed[0]["unread_count"] == 2 and listed[0]["read_seq"] == 0
    assert listed[1]["unread_count"] == 1
    assert r.get_json()["next"] is None
    # The sender's own messages are not unread for it.
    mine = client.get("/v1/conversations", headers=carol.headers).get_json()
    assert mine["conversations"][0]["unread_count"] == 0


def test_list_pages(client: Any, make_user: Any, chat: Any) -> None:
    alice = make_user()
    ids = []
    for _ in range(5):
        other = make_user()
        cid = chat.direct(other, alice)
        chat.send(other, cid)
        ids.append(cid)
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        url = "/v1/conversations?limit=2" + (f"&before={cursor}" if cursor else "")
        page = client.get(url, headers=alice.headers).get_json()
        seen.extend(c["id"] for c in page["conversations"])
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    r = client.get("/v1/conversations?limit=0", headers=alice.headers)
    assert r.status_code == 422
    r = client.get("/v1/conversations?limit=201", headers=alice.headers)
    assert r.status_code == 422
    r = client.get("/v1/conversations?before=garbage", headers=alice.headers)
    assert r.status_code == 422


def test_non_member_sees_nothing(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob, mallory = make_user(), make_user(), make_user()
    cid = chat.direct(alice, bob)
    chat.send(alice, cid, "secret")
    for method, url, body in [
        ("get", f"/v1/conversations/{cid}", None),
        ("get", f"/v1/conversations/{cid}/messages", None),
        (
            "post",
            f"/v1/conversations/{cid}/messages",
            {"client_msg_id": "m1", "body": "hi"},
        ),
    ]:
        r = getattr(client, method)(url, headers=mallory.headers, json=body)
        assert r.status_code == 404, (url, r.get_json())
        assert r.get_json()["error"]["code"] == "not_found"
    listed = client.get("/v1/conversations", headers=mallory.headers).get_json()
    assert listed["conversations"] == []
    cursor = chat.head(mallory)
    assert chat.poll(mallory, cursor)["events"] == []
    # A conversation that does not exist looks the same.
    assert (
        client.get("/v1/conversations/999999999", headers=mallory.headers).status_code
        == 404
    )


def test_conversation_list_page_stops_at_its_member_budget(
    client: Any, make_user: Any, chat: Any, monkeypatch: Any
) -> None:
    # 200 groups of 500 members were 100,000 member objects in one answer.
    from messenger.services import conversations

    monkeypatch.setattr(conversations, "LIST_MEMBERS_MAX", 7)
    alice = make_user()
    others = [make_user() for _ in range(2)]
    made = [chat.group(alice, others, title=f"g{n}") for n in range(5)]  # 3 each
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        url = "/v1/conversations?limit=50" + (f"&before={cursor}" if cursor else "")
        page = client.get(url, headers=alice.headers).get_json()
        assert sum(len(c["members"]) for c in page["conversations"]) <= 7
        seen += [c["id"] for c in page["conversations"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == made[::-1]


def test_opening_an_existing_direct_conversation_reads_no_directory(
    client: Any, make_user: Any, chat: Any, shards: Any, monkeypatch: Any
) -> None:
    alice, bob = make_user(), make_user()
    conversation_id = chat.direct(alice, bob)
    # Directory transactions this greenlet (the test client's request) opens; the
    # app's own background greenlets (map follower, sweeper) are not counted.
    opened: list[str] = []
    directory = shards.directory
    me = gevent.getcurrent()

    def spy(name: str, **kwargs: Any) -> Any:
        if gevent.getcurrent() is me:
            opened.append(name)
        return directory(name, **kwargs)

    monkeypatch.setattr(shards, "directory", spy)
    r = client.post(
        "/v1/conversations",
        headers=bob.headers,
        json={"kind": "direct", "user_id": alice.id},
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["conversation"]["id"] == conversation_id
    assert opened == []
    # A new pair still draws its conversation id from the directory.
    carol = make_user()
    r = client.post(
        "/v1/conversations",
        headers=carol.headers,
        json={"kind": "direct", "user_id": alice.id},
    )
    assert r.status_code == 201, r.get_json()
    assert "allocate_conversation_id" in opened


def test_a_direct_pair_lives_on_the_shard_of_the_lower_user_id(
    make_user: Any, chat: Any, shards: Any
) -> None:
    from messenger.storage import conversations as store

    alice, bob = make_user(), make_user()
    while shards.shard_of(bob.id) == shards.shard_of(alice.id):
        bob = make_user()
    conversation_id = chat.direct(bob, alice)
    lo, hi = sorted((alice.id, bob.id))
    with shards.on_user(lo, "test_pair", transaction=False) as cur:
        assert store.find_direct_pair(cur, lo, hi) == conversation_id
    with shards.on_user(hi, "test_pair", transaction=False) as cur:
        assert store.find_direct_pair(cur, lo, hi) is None
    with shards.directory("test_pair", transaction=False) as cur:
        cur.execute("SELECT to_regclass('directory.direct_pairs')")
        assert cur.fetchone()[0] is None


def test_concurrent_claims_of_a_pair_on_its_shard_agree(shards: Any) -> None:
    from messenger.storage import conversations as store

    # Ids of no user: the claim itself is what races here.
    lo = 9_100_000_000_000 + secrets.randbelow(10**9)
    hi = lo + 1

    def claim(conversation_id: int) -> tuple[bool, int | None]:
        with shards.on_user(lo, "test_claim_second") as cur:
            won = store.claim_direct_pair(cur, lo, hi, conversation_id)
            return won, store.find_direct_pair(cur, lo, hi)

    try:
        with shards.on_user(lo, "test_claim_first") as cur:
            assert store.claim_direct_pair(cur, lo, hi, 111)
            second = gevent.spawn(claim, 222)
            gevent.sleep(0.3)
            # It waits for the first claim's uncommitted key.
            assert not second.ready()
        assert second.get(timeout=10) == (False, 111)
    finally:
        with shards.on_user(lo, "test_claim_clean") as cur:
            cur.run("DELETE FROM {s}.direct_pairs WHERE user_lo = %s", (lo,))


def test_a_pair_claimed_before_a_crash_heals_on_the_next_call(
    client: Any, make_user: Any, shards: Any
) -> None:
    from messenger.storage import conversations as store
    from messenger.storage import users as user_store

    alice, bob = make_user(), make_user()
    lo, hi = sorted((alice.id, bob.id))
    # What a process that died between the claim and the creation left.
    with shards.directory("test_allocate", transaction=False) as cur:
        claimed = user_store.next_id(cur)
    with shards.on_user(lo, "test_claim") as cur:
        assert store.claim_direct_pair(cur, lo, hi, claimed)
    for caller, peer in ((alice, bob), (bob, alice)):
        r = client.post(
            "/v1/conversations",
            headers=caller.headers,
            json={"kind": "direct", "user_id": peer.id},
        )
        assert r.status_code == 200, r.get_json()
        conv = r.get_json()["conversation"]
        assert conv["id"] == claimed
        assert sorted(m["user_id"] for m in conv["members"]) == [lo, hi]
