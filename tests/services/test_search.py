"""Search: the caller's conversations only, stemmed, newest first, paged."""

from typing import Any

from messenger.storage import search as search_store


def _search(client: Any, user: Any, query: str, **params: Any) -> Any:
    return client.get(
        "/v1/search", headers=user.headers, query_string={"q": query, **params}
    )


def _bodies(client: Any, user: Any, query: str) -> list[str]:
    r = _search(client, user, query)
    assert r.status_code == 200, r.get_json()
    return [m["body"] for m in r.get_json()["messages"]]


def test_matches_stemmed_words(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    sent = chat.send(alice, cid, "I was running with the dogs yesterday")
    chat.send(bob, cid, "Cats are quieter")
    for query in ("run dog", "runs", "DOGS", "dog -cat", '"running with"'):
        r = _search(client, bob, query)
        assert r.status_code == 200
        assert r.get_json() == {"messages": [sent], "next": None}, query
    assert _bodies(client, bob, "run cat") == []
    assert _bodies(client, bob, "dog or cat") == [
        "Cats are quieter",
        "I was running with the dogs yesterday",
    ]
    # Only stop words: nothing to look for, an empty page.
    assert _search(client, bob, "the with").get_json() == {
        "messages": [],
        "next": None,
    }


def test_never_returns_another_users_conversation(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob, carol, dave = make_user(), make_user(), make_user(), make_user()
    mine = chat.direct(alice, bob)
    theirs = chat.direct(carol, dave)
    chat.send(alice, mine, "banana bread recipe")
    chat.send(carol, theirs, "secret banana plans")
    assert _bodies(client, alice, "banana") == ["banana bread recipe"]
    assert _bodies(client, carol, "banana") == ["secret banana plans"]
    assert _bodies(client, make_user(), "banana") == []


def test_removed_member_no_longer_finds_the_group(
    client: Any, make_user: Any, chat: Any
) -> None:
    owner, member = make_user(), make_user()
    cid = chat.group(owner, [member])
    chat.send(owner, cid, "quarterly planning notes")
    assert _bodies(client, member, "planning") == ["quarterly planning notes"]
    r = client.delete(
        f"/v1/conversations/{cid}/members/{member.id}", headers=owner.headers
    )
    assert r.status_code == 204
    assert _bodies(client, member, "planning") == []
    assert _bodies(client, owner, "planning") == ["quarterly planning notes"]


def test_newest_first_in_pages(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    first = chat.direct(alice, bob)
    second = chat.group(alice, [carol])
    sent = []
    for i in range(7):
        cid = first if i % 2 else second
        sent.append(chat.send(alice, cid, f"apple number {i}"))
        chat.send(alice, cid, "pear")
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3, **({"before": cursor} if cursor else {})}
        r = _search(client, alice, "apples", **params)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        seen.extend(body["messages"])
        pages += 1
        cursor = body["next"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert seen == list(reversed(sent))


def test_search_validation(client: Any, make_user: Any) -> None:
    user = make_user()
    for params in (
        {},
        {"q": ""},
        {"q": "   "},
        {"q": "x" * 201},
        {"q": "a", "limit": 0},
        {"q": "a", "limit": 201},
        {"q": "a", "before": "garbage"},
        {"q": "a", "before": "1.2"},
    ):
        r = client.get("/v1/search", headers=user.headers, query_string=params)
        assert r.status_code == 422, params
        assert r.get_json()["error"]["code"] == "validation_failed"
    assert client.get("/v1/search?q=a").status_code == 401


def test_search_expression_matches_the_index(shards: Any, make_user: Any) -> None:
    """Every shard has the index, and the search's expression can use it (on a
    tiny table the planner prefers the primary key, so only the text column is
    filtered here)."""
    from messenger.storage.shards import schema_name

    for shard in range(shards.shard_map.shards):
        with shards.on_dsn(
            shards.shard_map.dsn_of_shard(shard), "test_index", transaction=False
        ) as cur:
            cur.execute(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = %s "
                "AND indexname = 'mailbox_search'",
                (schema_name(shard),),
            )
            (indexdef,) = cur.fetchone()
            assert "body_tsv" in indexdef
    assert "mb.body_tsv @@" in search_store._SEARCH
    user = make_user()
    with shards.on_user(user.id, "test_explain_search") as cur:
        cur.execute("SET LOCAL enable_seqscan = off")
        plan = cur.run(
            "EXPLAIN SELECT 1 FROM {s}.mailbox mb "
            "WHERE mb.body_tsv @@ websearch_to_tsquery('english', %s)",
            ("apple",),
        ).fetchall()
    assert "mailbox_search" in "\n".join(row[0] for row in plan)


def test_search_cost_is_bounded(
    client: Any,
    make_user: Any,
    chat: Any,
    override_settings: Any,
    shards: Any,
    monkeypatch: Any,
) -> None:
    # `q=-word` matched (and re-tokenised) a whole mailbox, under the general
    # 15 s statement timeout, as often as a client liked.
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    chat.send(alice, cid, "apples and pears")
    with shards.on_user(alice.id, "stored_tsvector") as cur:
        (stored,) = cur.one(
            "SELECT body_tsv::text FROM {s}.mailbox WHERE user_id = %s", (alice.id,)
        )
    assert "'appl'" in stored  # tokenised once, on insert
    # A search that runs past its own timeout is a 422 naming q, not a 500/503.
    override_settings(search_timeout_ms=50)
    # (A search made slow on purpose: a real mailbox big enough takes minutes.)
    slow = search_store._SEARCH.replace(
        "WHERE mb.user_id", "WHERE pg_sleep(0.2) IS NOT NULL AND mb.user_id"
    )
    monkeypatch.setattr(search_store, "_SEARCH", slow)
    r = client.get("/v1/search?q=-zebra", headers=alice.headers)
    monkeypatch.undo()
    assert r.status_code == 422, r.get_json()
    assert "q" in r.get_json()["error"]["fields"]
    # And searches are limited per user.
    override_settings(search_timeout_ms=2000, rate_limits="search=3/60s")
    codes = [
        client.get("/v1/search?q=apples", headers=alice.headers).status_code
        for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]
