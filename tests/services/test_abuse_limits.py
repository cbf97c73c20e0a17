"""The abuse cases of issue 16, each shown to no longer work: group churn,
device registration floods, login guessing, and strangers locking an owner out."""

import json
import secrets
from collections.abc import Callable
from typing import Any

import pytest

from messenger.settings import (
    DEFAULT_RATE_LIMITS,
    RATE_LIMIT_DEFAULTS,
    parse_rate_limits,
)
from tests.conftest import stored_events


@pytest.fixture
def limits(override_settings: Any) -> Callable[[str], None]:
    def set_limits(spec: str) -> None:
        override_settings(rate_limits=spec)

    return set_limits


def address() -> dict[str, Any]:
    return {"REMOTE_ADDR": f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.9"}


def assert_limited(r: Any) -> None:
    assert r.status_code == 429, r.get_json()
    assert r.get_json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1


def rename(client: Any, user: Any, cid: int, title: str) -> Any:
    return client.patch(
        f"/v1/conversations/{cid}", headers=user.headers, json={"title": title}
    )


def test_renaming_a_group_in_a_loop_is_stopped(
    client: Any, make_user: Any, chat: Any, limits: Any
) -> None:
    owner, victims = make_user(), [make_user() for _ in range(3)]
    group = chat.group(owner, victims)
    limits("group_change=3/60s")
    for i in range(3):
        assert rename(client, owner, group, f"spam {i}").status_code == 200
    assert_limited(rename(client, owner, group, "spam 3"))
    r = client.get(f"/v1/conversations/{group}", headers=owner.headers)
    assert (
        r.get_json()["conversation"]["title"] == "spam 2"
    )  # the refused one did nothing


def test_every_group_change_counts(
    client: Any, make_user: Any, chat: Any, limits: Any
) -> None:
    owner, bob, carol = make_user(), make_user(), make_user()
    group = chat.group(owner, [bob])
    limits("group_change=2/60s")
    r = client.post(
        f"/v1/conversations/{group}/members",
        headers=owner.headers,
        json={"user_id": carol.id},
    )
    assert r.status_code == 201
    r = client.delete(
        f"/v1/conversations/{group}/members/{carol.id}", headers=owner.headers
    )
    assert r.status_code == 204
    assert_limited(client.delete(f"/v1/conversations/{group}", headers=owner.headers))
    assert_limited(
        client.post(
            f"/v1/conversations/{group}/members",
            headers=owner.headers,
            json={"user_id": carol.id},
        )
    )
    assert (
        client.get(f"/v1/conversations/{group}", headers=owner.headers).status_code
        == 200
    )


def test_members_taking_turns_are_limited_per_group(
    client: Any, make_user: Any, chat: Any, limits: Any
) -> None:
    members = [make_user() for _ in range(4)]
    group = chat.group(members[0], members[1:])
    limits("group_change_conversation=3/60s")
    for i, member in enumerate(members[:3]):
        assert rename(client, member, group, f"turn {i}").status_code == 200
    assert_limited(rename(client, members[3], group, "turn 3"))
    other = chat.group(members[3], [members[0]])
    assert rename(client, members[3], other, "elsewhere").status_code == 200


def test_a_rename_event_carries_only_what_changed(
    client: Any, make_user: Any, chat: Any
) -> None:
    owner, members = make_user(), [make_user() for _ in range(30)]
    group = chat.group(owner, members)
    cursor = chat.head(members[0])
    assert rename(client, owner, group, "new title").status_code == 200
    (event,) = stored_events(chat.drain(members[0], cursor)[0])
    assert event["type"] == "conversation_updated"
    assert event["conversation"]["title"] == "new title"
    assert "members" not in event["conversation"]
    assert len(json.dumps(event)) < 1000  # not thirty member entries


def test_registering_devices_in_a_loop_is_stopped(
    client: Any, make_user: Any, limits: Any
) -> None:
    alice = make_user()
    limits("device=2/1h")

    def register(i: int) -> Any:
        return client.post(
            "/v1/devices",
            headers=alice.headers,
            json={"kind": "webhook", "url": f"http://127.0.0.1:9/d{i}"},
        )

    assert [register(i).status_code for i in range(2)] == [201, 201]
    assert_limited(register(2))


def test_upload_has_a_declared_default() -> None:
    """#15's attachment route applies it; declared here with the others."""
    assert "upload" in RATE_LIMIT_DEFAULTS
    assert parse_rate_limits("upload=5/1m")["upload"].count == 5
    assert parse_rate_limits("on")["upload"] == DEFAULT_RATE_LIMITS["upload"]


def test_guessing_one_handle_from_one_address_is_stopped(
    client: Any, make_user: Any, limits: Any
) -> None:
    alice = make_user()
    limits("login_handle_address=3/5m")
    attacker = address()
    for _ in range(3):
        r = client.post(
            "/v1/sessions",
            json={"handle": alice.handle, "password": "guess 1234"},
            environ_base=attacker,
        )
        assert r.status_code == 401
    right = {"handle": alice.handle, "password": alice.password}
    assert_limited(client.post("/v1/sessions", json=right, environ_base=attacker))
    # The owner, elsewhere, is not affected.
    assert (
        client.post("/v1/sessions", json=right, environ_base=address()).status_code
        == 201
    )


def test_strangers_guessing_from_many_addresses_cannot_lock_the_owner_out(
    client: Any, make_user: Any, limits: Any
) -> None:
    alice = make_user()
    home = address()
    right = {"handle": alice.handle, "password": alice.password}
    wrong = {"handle": alice.handle, "password": "guess 1234"}
    assert client.post("/v1/sessions", json=right, environ_base=home).status_code == 201
    limits("login_handle=5/1h")
    for _ in range(5):  # strangers, each from an address of its own
        assert (
            client.post("/v1/sessions", json=wrong, environ_base=address()).status_code
            == 401
        )
    # The handle's budget is spent: guessing stops, from anywhere...
    assert_limited(client.post("/v1/sessions", json=wrong, environ_base=address()))
    # ...even with the right password from an address it never logged in from...
    assert_limited(client.post("/v1/sessions", json=right, environ_base=address()))
    # ...and a wrong one from home does not get through either...
    assert_limited(client.post("/v1/sessions", json=wrong, environ_base=home))
    # ...but the owner, from home, with the right password, gets in.
    r = client.post("/v1/sessions", json=right, environ_base=home)
    assert r.status_code == 201, r.get_json()
