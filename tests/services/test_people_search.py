"""People search (GET /v1/users?q=): handle or display-name prefix, any case,
the exact handle first, served by the prefix indexes of the directory."""

import secrets
from typing import Any

import pytest

from messenger import runtime
from messenger.storage import users as user_store


def search(client: Any, user: Any, q: str, limit: int | None = None) -> Any:
    url = f"/v1/users?q={q}" + (f"&limit={limit}" if limit is not None else "")
    return client.get(url, headers=user.headers)


def found_ids(client: Any, user: Any, q: str, limit: int | None = None) -> list[int]:
    r = search(client, user, q, limit)
    assert r.status_code == 200, r.get_json()
    return [u["id"] for u in r.get_json()["users"]]


def register(client: Any, handle: str, display_name: str | None = None) -> int:
    body = {"handle": handle, "password": "long enough"}
    if display_name:
        body["display_name"] = display_name
    r = client.post("/v1/users", json=body)
    assert r.status_code == 201, r.get_json()
    return int(r.get_json()["user"]["id"])


def test_prefix_of_handle_or_display_name_any_case(client: Any, make_user: Any) -> None:
    me = make_user()
    tag = secrets.token_hex(3)
    exact = register(client, f"zed{tag}")
    longer = register(client, f"zed{tag}_b")
    named = register(client, f"q{tag}", display_name=f"ZED{tag} Named")
    other = register(client, f"y{tag}", display_name=f"Not zed{tag}")
    assert found_ids(client, me, f"zed{tag}") == [exact, longer, named]
    assert found_ids(client, me, f"ZeD{tag}") == [exact, longer, named]
    assert other not in found_ids(client, me, "zed")
    assert found_ids(client, me, f"not%20zed{tag}") == [other]


def test_the_exact_handle_comes_first(client: Any, make_user: Any) -> None:
    me = make_user()
    tag = secrets.token_hex(3)
    a = register(client, f"{tag}aa")
    b = register(client, f"{tag}a", display_name=f"{tag}a zzz")
    assert found_ids(client, me, f"{tag}a") == [b, a]


def test_the_caller_is_included(client: Any, make_user: Any) -> None:
    me = make_user("selfsearch")
    assert found_ids(client, me, me.handle) == [me.id]


def test_like_wildcards_are_plain_characters(client: Any, make_user: Any) -> None:
    me = make_user()
    tag = secrets.token_hex(3)
    under = register(client, f"w{tag}_x")
    register(client, f"w{tag}yx")
    assert found_ids(client, me, f"w{tag}_") == [under]
    assert found_ids(client, me, "%25") == []


def test_limit_default_and_bounds(client: Any, make_user: Any) -> None:
    me = make_user()
    tag = "lim" + secrets.token_hex(2)
    for i in range(55):
        register(client, f"{tag}{i:02d}")
    assert len(found_ids(client, me, tag)) == 20
    assert len(found_ids(client, me, tag, limit=50)) == 50
    assert search(client, me, tag, limit=51).status_code == 422
    assert search(client, me, tag, limit=0).status_code == 422


@pytest.mark.parametrize(
    "url",
    [
        "/v1/users?q=",
        "/v1/users?q=" + "a" * 33,
        "/v1/users",
        "/v1/users?q=ab&handle=abc",
    ],
)
def test_bad_queries_are_422(client: Any, make_user: Any, url: str) -> None:
    me = make_user()
    r = client.get(url, headers=me.headers)
    assert r.status_code == 422, r.get_json()


def test_the_handle_lookup_still_answers_one_user(client: Any, make_user: Any) -> None:
    me, bob = make_user(), make_user()
    r = client.get(f"/v1/users?handle={bob.handle}", headers=me.headers)
    assert r.get_json() == {"user": r.get_json()["user"]}
    assert r.get_json()["user"]["id"] == bob.id


@pytest.mark.parametrize(
    ("column", "index"),
    [("handle", "users_handle_prefix"), ("display_name", "users_display_name_prefix")],
)
def test_a_prefix_search_can_use_its_index(column: str, index: str, app: Any) -> None:
    with runtime.get().router.directory("explain_search") as cur:
        cur.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in cur.run(
                "EXPLAIN SELECT user_id FROM {s}.users"
                f" WHERE lower({column}) LIKE %s",
                (user_store._like_prefix("ali"),),
            ).fetchall()
        )
    assert index in plan, plan
