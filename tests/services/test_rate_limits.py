"""Rate limits: per user, per address, per handle tried; 429 with Retry-After;
never a reason to fail a request when Redis is down."""

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from messenger import metrics, runtime
from messenger.embedded import free_port
from messenger.realtime.connections import shared_client
from messenger.services import ratelimit
from messenger.settings import (
    DEFAULT_RATE_LIMITS,
    ConfigError,
    RateLimit,
    load,
    parse_rate_limits,
)


@pytest.fixture
def limits(override_settings: Any) -> Callable[[str], None]:
    """Turn rate limits on for one test: limits("send=3/60s")."""

    def set_limits(spec: str) -> None:
        override_settings(rate_limits=spec)

    return set_limits


def address() -> dict[str, Any]:
    """A client address of its own, so counters don't carry over between tests."""
    return {"REMOTE_ADDR": f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.7"}


def assert_limited(r: Any) -> None:
    assert r.status_code == 429, r.get_json()
    assert r.get_json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1


def test_sends_are_limited_per_user(
    client: Any, make_user: Any, chat: Any, limits: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    limits("send=3/60s")
    for _ in range(3):
        chat.send(alice, cid)
    r = client.post(
        f"/v1/conversations/{cid}/messages",
        headers=alice.headers,
        json={"client_msg_id": "over", "body": "one too many"},
    )
    assert_limited(r)
    assert int(r.headers["Retry-After"]) <= 120
    chat.send(bob, cid)  # another user has a budget of their own
    # The refused message was not stored.
    history = client.get(f"/v1/conversations/{cid}/messages", headers=bob.headers)
    assert [m["body"] for m in history.get_json()["messages"]] == ["hi"] * 4


def test_typing_and_conversation_creation_are_limited(
    client: Any, make_user: Any, chat: Any, limits: Any
) -> None:
    alice, bob, carol, dave = make_user(), make_user(), make_user(), make_user()
    # Three conversations: typing also has a once-a-second gate per conversation.
    cids = [chat.direct(alice, peer) for peer in (bob, carol, dave)]
    limits("typing=2/60s,conversation=1/60s")
    for cid in cids[:2]:
        r = client.post(f"/v1/conversations/{cid}/typing", headers=alice.headers)
        assert r.status_code == 204
    assert_limited(
        client.post(f"/v1/conversations/{cids[2]}/typing", headers=alice.headers)
    )
    group = {"kind": "group", "title": "limited"}
    r = client.post("/v1/conversations", headers=bob.headers, json=group)
    assert r.status_code == 201
    assert_limited(client.post("/v1/conversations", headers=bob.headers, json=group))


def test_typing_is_limited_per_conversation(
    client: Any, make_user: Any, chat: Any, limits: Any
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    with_bob, with_carol = chat.direct(alice, bob), chat.direct(alice, carol)
    limits("typing_conversation=1/60s")
    url = "/v1/conversations/{}/typing"
    assert client.post(url.format(with_bob), headers=alice.headers).status_code == 204
    assert_limited(client.post(url.format(with_bob), headers=alice.headers))
    # Another conversation, or another member of this one, has its own budget.
    assert client.post(url.format(with_carol), headers=alice.headers).status_code == 204
    assert client.post(url.format(with_bob), headers=bob.headers).status_code == 204


def test_logins_are_limited_per_address(
    client: Any, make_user: Any, limits: Any
) -> None:
    alice = make_user()
    limits("login=2/60s")
    here, there = address(), address()
    wrong = {"handle": alice.handle, "password": "wrong password"}
    for _ in range(2):
        r = client.post("/v1/sessions", json=wrong, environ_base=here)
        assert r.status_code == 401
    right = {"handle": alice.handle, "password": alice.password}
    assert_limited(client.post("/v1/sessions", json=right, environ_base=here))
    assert (
        client.post("/v1/sessions", json=right, environ_base=there).status_code == 201
    )


def test_logins_are_limited_per_handle_without_revealing_it_exists(
    client: Any, make_user: Any, limits: Any
) -> None:
    alice = make_user()
    limits("login_handle=2/60s")
    ghost = "nobody_" + secrets.token_hex(4)
    answers = {}
    for handle in (alice.handle, ghost):
        for _ in range(2):
            r = client.post(
                "/v1/sessions",
                json={"handle": handle, "password": "guess 1234"},
                environ_base=address(),
            )
            assert r.status_code == 401
        r = client.post(
            "/v1/sessions",
            json={"handle": handle, "password": "guess 1234"},
            environ_base=address(),
        )
        assert_limited(r)
        answers[handle] = r.get_json()
    assert answers[alice.handle] == answers[ghost]


def test_registrations_are_limited_per_address(client: Any, limits: Any) -> None:
    limits("register=2/1h")
    here = address()

    def register() -> Any:
        body = {"handle": "rl_" + secrets.token_hex(5), "password": "long enough"}
        return client.post("/v1/users", json=body, environ_base=here)

    assert register().status_code == 201
    assert register().status_code == 201
    r = register()
    assert_limited(r)
    assert int(r.headers["Retry-After"]) > 60  # an hour's window


def test_an_ipv6_slash_64_counts_as_one_address(client: Any, limits: Any) -> None:
    # One subscriber gets a whole /64: one address each request must not reset
    # the budget.
    limits("register=2/1h")
    prefix = f"2001:db8:{secrets.randbelow(65535):x}:{secrets.randbelow(65535):x}"

    def register(host: str) -> Any:
        body = {"handle": "rl6_" + secrets.token_hex(5), "password": "long enough"}
        return client.post(
            "/v1/users", json=body, environ_base={"REMOTE_ADDR": f"{prefix}:{host}"}
        )

    assert register("0:0:0:1").status_code == 201
    assert register("1:2:3:4").status_code == 201
    assert_limited(register("dead:beef:0:7"))
    # The next /64 is another subscriber.
    other = {"REMOTE_ADDR": f"2001:db8:ffff:{secrets.randbelow(65535):x}::1"}
    r = client.post(
        "/v1/users",
        json={"handle": "rl6_" + secrets.token_hex(5), "password": "long enough"},
        environ_base=other,
    )
    assert r.status_code == 201


def test_off_disables_every_limit(
    client: Any, make_user: Any, chat: Any, limits: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    # The defaults ("on") stop a burst of sends and of typing...
    limits("on")
    sends = [chat_send(client, alice, cid).status_code for _ in range(40)]
    typing = [chat_typing(client, alice, cid).status_code for _ in range(25)]
    assert 429 in sends and 429 in typing
    # ...and "off" lets the same bursts through, for a user already over them.
    limits("off")
    assert {chat_send(client, alice, cid).status_code for _ in range(40)} == {201}
    assert {chat_typing(client, alice, cid).status_code for _ in range(25)} == {204}


def chat_send(client: Any, user: Any, conversation_id: int) -> Any:
    return client.post(
        f"/v1/conversations/{conversation_id}/messages",
        headers=user.headers,
        json={"client_msg_id": secrets.token_hex(8), "body": "burst"},
    )


def chat_typing(client: Any, user: Any, conversation_id: int) -> Any:
    return client.post(
        f"/v1/conversations/{conversation_id}/typing", headers=user.headers
    )


def test_redis_outage_never_blocks_a_request(
    make_user: Any, chat: Any, limits: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    limits("send=1/60s")
    rt = runtime.get()
    working = rt.redis
    # Configured as the app's own client (no retries), on a port nothing serves.
    dead = shared_client(f"redis://127.0.0.1:{free_port()}/0", 4)
    errors_before = metrics.REDIS_ERRORS.labels(op="rate_limit")._value.get()
    rt.redis = dead
    try:
        for _ in range(3):
            chat.send(alice, cid)  # over the limit, but the limiter can't count
    finally:
        rt.redis = working
        dead.close()
        ratelimit.reset_backoff()
    assert metrics.REDIS_ERRORS.labels(op="rate_limit")._value.get() > errors_before


def test_sliding_window_counts_the_previous_window(app: Any, limits: Any) -> None:
    limits("send=4/10s")
    now = [1_000_000.0]  # the start of a window
    limiter = ratelimit.Limiter(clock=lambda: now[0])
    subject = "user:sliding" + secrets.token_hex(4)
    for _ in range(4):
        limiter.check("send", subject)
    with pytest.raises(ratelimit.RateLimited) as refused:
        limiter.check("send", subject)
    # The window ends in 10 s; then this one still weighs in for a while.
    assert 10 < int(refused.value.headers["Retry-After"]) <= 20
    now[0] += 12.5  # a quarter into the next window: 4 * 0.75 = 3 still count
    limiter.check("send", subject)
    with pytest.raises(ratelimit.RateLimited) as refused:
        limiter.check("send", subject)
    # One more fits once the previous window weighs below 2 requests: at 15 s.
    assert int(refused.value.headers["Retry-After"]) == 3
    now[0] += 3
    limiter.check("send", subject)


def test_rate_limit_setting_is_validated() -> None:
    assert parse_rate_limits("on") == dict(DEFAULT_RATE_LIMITS)
    assert parse_rate_limits("off") == {}
    custom = parse_rate_limits("send=5/1m, typing=off")
    assert custom["send"] == RateLimit(5, 60) and "typing" not in custom
    for bad in ("send=5", "sends=5/1m", "send=0/10s", "send=5/10d"):
        with pytest.raises(ConfigError, match="MESSENGER_RATE_LIMITS"):
            load({"MESSENGER_RATE_LIMITS": bad})


def test_login_and_registration_stay_limited_while_redis_is_down(
    client: Any, make_user: Any, limits: Any
) -> None:
    # Every limit, login included, was off while Redis was down.
    alice = make_user()
    limits("login=3/60s,register=2/1h,send=1/60s")
    rt = runtime.get()
    working = rt.redis
    dead = shared_client(f"redis://127.0.0.1:{free_port()}/0", 4)
    here = address()
    rt.redis = dead
    try:
        logins = [
            client.post(
                "/v1/sessions",
                json={"handle": alice.handle, "password": "wrong guess"},
                environ_base=here,
            ).status_code
            for _ in range(5)
        ]
        registrations = [
            client.post(
                "/v1/users",
                json={
                    "handle": "rd_" + secrets.token_hex(5),
                    "password": "long enough",
                },
                environ_base=here,
            ).status_code
            for _ in range(3)
        ]
    finally:
        rt.redis = working
        dead.close()
        ratelimit.reset_backoff()
    assert logins == [401, 401, 401, 429, 429]
    assert registrations == [201, 201, 429]
