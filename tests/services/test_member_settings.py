"""Per-member settings (API.md): mute stops pushes, archive hides from the list
until another member writes, `member_settings` to the caller alone."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import stored_events


def patch_me(client: Any, user: Any, cid: int, body: Any) -> Any:
    return client.patch(f"/v1/conversations/{cid}/me", headers=user.headers, json=body)


def listed(client: Any, user: Any, query: str = "") -> list[int]:
    r = client.get(f"/v1/conversations{query}", headers=user.headers)
    assert r.status_code == 200, r.get_json()
    return [c["id"] for c in r.get_json()["conversations"]]


def add_device(client: Any, user: Any) -> None:
    r = client.post(
        "/v1/devices",
        headers=user.headers,
        json={"kind": "webhook", "url": f"http://127.0.0.1:9/{user.id}"},
    )
    assert r.status_code == 201


def iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_mute_until_a_time_forever_and_off(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=8)
    r = patch_me(client, bob, cid, {"muted_until": iso(later)})
    assert r.status_code == 200
    conv = r.get_json()["conversation"]
    assert conv["muted_until"] == iso(later) and conv["archived"] is False
    r = patch_me(client, bob, cid, {"muted_until": "forever"})
    assert r.get_json()["conversation"]["muted_until"] == "forever"
    alice_view = client.get(f"/v1/conversations/{cid}", headers=alice.headers)
    assert alice_view.get_json()["conversation"]["muted_until"] is None  # bob's own
    r = patch_me(client, bob, cid, {"muted_until": None})
    assert r.get_json()["conversation"]["muted_until"] is None
    # A time already past is no mute.
    past = datetime.now(UTC) - timedelta(minutes=1)
    r = patch_me(client, bob, cid, {"muted_until": iso(past)})
    assert r.get_json()["conversation"]["muted_until"] is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"muted_until": "tomorrow"},
        {"muted_until": "2030-01-01T00:00:00"},  # no zone
        {"muted_until": 5},
        {"archived": "yes"},
        {"archived": 1},
        {"archived": True, "title": "x"},
    ],
)
def test_bad_settings_are_422(
    client: Any, make_user: Any, chat: Any, body: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    r = patch_me(client, alice, cid, body)
    assert r.status_code == 422, r.get_json()


def test_settings_of_a_conversation_not_mine_are_404(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob, eve = make_user(), make_user(), make_user()
    cid = chat.direct(alice, bob)
    assert patch_me(client, eve, cid, {"archived": True}).status_code == 404


def test_archive_hides_until_someone_else_writes(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    other = chat.direct(make_user(), alice)
    r = patch_me(client, alice, cid, {"archived": True})
    assert r.get_json()["conversation"]["archived"] is True
    assert listed(client, alice) == [other]
    assert listed(client, alice, "?archived=true") == [cid]
    chat.send(alice, cid, "my own message keeps it archived")
    assert listed(client, alice, "?archived=true") == [cid]
    chat.send(bob, cid, "bob's brings it back")
    assert listed(client, alice, "?archived=true") == []
    assert listed(client, alice) == [cid, other]


def test_member_settings_event_goes_to_the_caller_alone(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    alice_cursor, bob_cursor = chat.head(alice), chat.head(bob)
    patch_me(client, alice, cid, {"archived": True, "muted_until": "forever"})
    patch_me(client, alice, cid, {"archived": True})  # no change: no event
    patch_me(client, alice, cid, {"muted_until": "forever"})  # no change either
    chat.send(bob, cid, "un-archives, silently")
    alice_events, _ = chat.drain(alice, alice_cursor)
    bob_events, _ = chat.drain(bob, bob_cursor)
    assert [e["type"] for e in stored_events(alice_events)] == [
        "member_settings",
        "message",
    ]
    (settings_event, _) = stored_events(alice_events)
    assert settings_event == {
        "type": "member_settings",
        "id": settings_event["id"],
        "conversation_id": cid,
        "muted_until": "forever",
        "archived": True,
    }
    assert [e["type"] for e in stored_events(bob_events)] == ["message"]
