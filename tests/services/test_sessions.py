"""Sessions on the user's shard: tokens carrying the user id, the per-worker
cache of verified tokens, listing, revoking, password change, idle expiry."""

import secrets
import time
from typing import Any

import gevent
import pytest
import redis as redis_lib

from messenger import runtime
from messenger.realtime import revocations
from messenger.services import sessions
from messenger.storage.pools import ShardCursor


def login(client: Any, user: Any, agent: str = "pytest", **environ: Any) -> str:
    r = client.post(
        "/v1/sessions",
        json={"handle": user.handle, "password": user.password},
        headers={"User-Agent": agent},
        **({"environ_base": environ} if environ else {}),
    )
    assert r.status_code == 201, r.get_json()
    return str(r.get_json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def status(client: Any, token: str) -> int:
    return int(client.get("/v1/users/me", headers=bearer(token)).status_code)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement sent to PostgreSQL during the test."""
    sent: list[str] = []
    original = ShardCursor.execute

    def execute(self: ShardCursor, query: Any, vars: Any = None) -> Any:
        sent.append(query.decode() if isinstance(query, bytes) else str(query))
        return original(self, query, vars)

    monkeypatch.setattr(ShardCursor, "execute", execute)
    return sent


def wait_until_listening(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not sessions.token_cache.is_live():
        assert time.monotonic() < deadline, "revocation listener never subscribed"
        gevent.sleep(0.02)


def test_a_token_carries_its_user_id(client: Any, make_user: Any) -> None:
    alice = make_user()
    user_part, _, secret = login(client, alice).partition(".")
    assert int(user_part) == alice.id
    assert len(secret) >= 43  # 256 random bits


@pytest.mark.parametrize(
    "token",
    [
        secrets.token_urlsafe(32),  # a token of the first release: no user id
        "0." + secrets.token_urlsafe(32),
        "1." + secrets.token_urlsafe(32),  # a user id with a made-up secret
        "12.short",
        "x" * 300,
        "9999999999999999999." + secrets.token_urlsafe(32),  # beyond a bigint
    ],
    ids=["first-release", "zero-id", "made-up", "short", "long", "beyond-bigint"],
)
def test_malformed_or_unknown_tokens_are_401(client: Any, token: str) -> None:
    r = client.get("/v1/users/me", headers=bearer(token))
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"


def test_another_users_id_in_front_of_a_secret_is_refused(
    client: Any, make_user: Any
) -> None:
    alice, bob = make_user(), make_user()
    _, _, secret = alice.token.partition(".")
    assert status(client, f"{bob.id}.{secret}") == 401
    assert status(client, alice.token) == 200


def test_a_cached_token_costs_no_database_round_trip(
    client: Any, make_user: Any, statements: list[str]
) -> None:
    wait_until_listening()
    alice = make_user()
    token = login(client, alice)
    statements.clear()
    assert client.get("/v1/events", headers=bearer(token)).status_code == 200
    first = [s for s in statements if "sessions" in s]
    assert len(first) == 1  # a miss: one statement on alice's shard
    statements.clear()
    for _ in range(3):
        assert client.get("/v1/events", headers=bearer(token)).status_code == 200
    assert not [s for s in statements if "sessions" in s]


def test_a_revocation_broadcast_drops_a_cached_token(
    client: Any, make_user: Any, services: Any
) -> None:
    """What another worker's revocation does here: the row goes, then its digest
    arrives on the channel; the cached token is refused at once."""
    wait_until_listening()
    alice = make_user()
    token = login(client, alice)
    assert status(client, token) == 200  # now cached
    digest = sessions.token_digest(token)
    with runtime.get().router.on_user(alice.id, "test_revoke_elsewhere") as cur:
        cur.run("DELETE FROM {s}.sessions WHERE token_hash = %s", (digest,))
    assert status(client, token) == 200  # still cached: the row alone is not enough
    other = redis_lib.Redis.from_url(services.redis.url)
    try:
        revocations.publish(other, digests=[digest])
    finally:
        other.close()
    deadline = time.monotonic() + 1.0
    while status(client, token) != 401:
        assert time.monotonic() < deadline, "the broadcast did not drop the token"
        gevent.sleep(0.01)


def test_the_cache_serves_only_while_its_listener_is_subscribed(
    client: Any, make_user: Any, statements: list[str], monkeypatch: Any
) -> None:
    wait_until_listening()
    alice = make_user()
    token = login(client, alice)
    assert status(client, token) == 200
    monkeypatch.setattr(sessions.token_cache, "is_live", lambda: False)
    statements.clear()
    assert status(client, token) == 200
    assert [s for s in statements if "sessions" in s]


def test_session_list_shows_agent_last_use_and_current(
    client: Any, make_user: Any
) -> None:
    alice = make_user()
    phone = login(client, alice, agent="Phone/1.0")
    laptop = login(client, alice, agent="Laptop/2.0 " + "x" * 400)
    r = client.get("/v1/sessions", headers=bearer(laptop))
    assert r.status_code == 200
    listed = r.get_json()["sessions"]
    assert [s["user_agent"][:10] for s in listed[:2]] == ["Laptop/2.0", "Phone/1.0"]
    assert len(listed[0]["user_agent"]) == sessions.USER_AGENT_MAX_CHARS
    assert [s["current"] for s in listed] == [True] + [False] * (len(listed) - 1)
    assert set(listed[0]) == {
        "id",
        "created_at",
        "last_used_at",
        "user_agent",
        "current",
    }
    times = [s["created_at"] for s in listed]
    assert times == sorted(times, reverse=True)  # newest first
    mine = client.get("/v1/sessions", headers=bearer(phone)).get_json()["sessions"]
    assert [s["current"] for s in mine if s["user_agent"].startswith("Phone")] == [True]


def test_revoking_one_session_refuses_it_at_once(client: Any, make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    phone, laptop = login(client, alice), login(client, alice)
    assert status(client, phone) == 200
    listed = client.get("/v1/sessions", headers=bearer(laptop)).get_json()["sessions"]
    phone_id = next(
        s["id"] for s in listed if not s["current"] and s["id"] != listed[-1]["id"]
    )
    # Bob cannot revoke alice's session: 404, and it still works.
    r = client.delete(f"/v1/sessions/{phone_id}", headers=bob.headers)
    assert r.status_code == 404
    assert status(client, phone) == 200
    r = client.delete(f"/v1/sessions/{phone_id}", headers=bearer(laptop))
    assert r.status_code == 204
    assert status(client, phone) == 401
    assert status(client, laptop) == 200
    again = client.delete(f"/v1/sessions/{phone_id}", headers=bearer(laptop))
    assert again.status_code == 404


def test_revoking_all_others_keeps_the_current_one(client: Any, make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    others = [login(client, alice) for _ in range(3)]
    keep = login(client, alice)
    for token in others:
        assert status(client, token) == 200
    assert client.delete("/v1/sessions", headers=bearer(keep)).status_code == 204
    assert [status(client, t) for t in others] == [401, 401, 401]
    assert status(client, alice.token) == 401
    assert status(client, keep) == 200
    assert status(client, bob.token) == 200  # nobody else's
    listed = client.get("/v1/sessions", headers=bearer(keep)).get_json()["sessions"]
    assert [s["current"] for s in listed] == [True]


def test_logout_refuses_the_token_at_once(client: Any, make_user: Any) -> None:
    alice = make_user()
    token = login(client, alice)
    assert status(client, token) == 200
    assert (
        client.delete("/v1/sessions/current", headers=bearer(token)).status_code == 204
    )
    assert status(client, token) == 401
    assert status(client, alice.token) == 200


def test_password_change_revokes_every_other_session(
    client: Any, make_user: Any
) -> None:
    alice = make_user()
    other = login(client, alice)
    assert status(client, other) == 200
    wrong = client.put(
        "/v1/users/me/password",
        headers=alice.headers,
        json={"current_password": "not it at all", "new_password": "brand new pw"},
    )
    assert wrong.status_code == 403
    assert wrong.get_json()["error"]["code"] == "forbidden"
    assert status(client, other) == 200  # nothing changed
    too_short = client.put(
        "/v1/users/me/password",
        headers=alice.headers,
        json={"current_password": alice.password, "new_password": "short"},
    )
    assert too_short.status_code == 422
    assert "new_password" in too_short.get_json()["error"]["fields"]
    r = client.put(
        "/v1/users/me/password",
        headers=alice.headers,
        json={"current_password": alice.password, "new_password": "brand new pw"},
    )
    assert r.status_code == 204
    assert status(client, other) == 401
    assert status(client, alice.token) == 200  # the session that changed it
    old = client.post(
        "/v1/sessions", json={"handle": alice.handle, "password": alice.password}
    )
    assert old.status_code == 401
    new = client.post(
        "/v1/sessions", json={"handle": alice.handle, "password": "brand new pw"}
    )
    assert new.status_code == 201


def test_a_session_idle_too_long_expires(
    client: Any, make_user: Any, override_settings: Any
) -> None:
    alice = make_user()
    token = login(client, alice)
    idle = runtime.get().settings.session_idle_days
    with runtime.get().router.on_user(alice.id, "test_age_session") as cur:
        cur.run(
            "UPDATE {s}.sessions SET last_used_at = now() - make_interval(days => %s)"
            " WHERE token_hash = %s",
            (idle, sessions.token_digest(token)),
        )
    sessions.token_cache.clear()
    assert status(client, token) == 401
    listed = client.get("/v1/sessions", headers=alice.headers).get_json()["sessions"]
    assert len(listed) == 1 and listed[0]["current"]
    # A longer idle allowance would have kept a session used a day less ago.
    token = login(client, alice)
    with runtime.get().router.on_user(alice.id, "test_age_session") as cur:
        cur.run(
            "UPDATE {s}.sessions SET last_used_at = now() - make_interval(days => %s)"
            " WHERE token_hash = %s",
            (idle - 1, sessions.token_digest(token)),
        )
    sessions.token_cache.clear()
    assert status(client, token) == 200


def test_last_use_is_written_at_most_every_half_minute(
    client: Any, make_user: Any
) -> None:
    alice = make_user()
    token = login(client, alice)
    digest = sessions.token_digest(token)

    def last_used() -> Any:
        with runtime.get().router.on_user(alice.id, "test_last_used") as cur:
            return cur.one(
                "SELECT last_used_at FROM {s}.sessions WHERE token_hash = %s",
                (digest,),
            )[0]

    before = last_used()
    sessions.token_cache.clear()
    assert status(client, token) == 200
    assert last_used() == before  # used just now: not written again
    with runtime.get().router.on_user(alice.id, "test_age_session") as cur:
        cur.run(
            "UPDATE {s}.sessions SET last_used_at = now() - interval '5 minutes'"
            " WHERE token_hash = %s",
            (digest,),
        )
    sessions.token_cache.clear()
    assert status(client, token) == 200
    assert last_used() > before


def test_profile_edit_changes_the_display_name(client: Any, make_user: Any) -> None:
    alice = make_user()
    r = client.patch(
        "/v1/users/me", headers=alice.headers, json={"display_name": "Alice L."}
    )
    assert r.status_code == 200
    assert r.get_json()["user"]["display_name"] == "Alice L."
    assert client.get(f"/v1/users/{alice.id}", headers=alice.headers).get_json()[
        "user"
    ]["display_name"] == ("Alice L.")
    for body in ({"display_name": ""}, {"display_name": "x" * 65}, {"handle": "new"}):
        r = client.patch("/v1/users/me", headers=alice.headers, json=body)
        assert r.status_code == 422, body
