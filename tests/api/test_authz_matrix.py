"""Who may call what: every route × five callers, with the status each gets.

The callers, around one group conversation owned by `owner`:
- anonymous: no token;
- other: another user's valid token; shares a direct conversation with the owner,
  not the group (and does not own the owner's device);
- non_member: a user sharing nothing with anyone;
- member: a member of the group;
- owner: the group's owner (and owner of a push device).

A new route cannot ship without its row: the first test fails on any route of
the app that the table lacks.
"""

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from messenger.api import openapi
from tests import conftest

ACTORS = ("anonymous", "other", "non_member", "member", "owner")


@dataclass(frozen=True)
class Row:
    method: str
    rule: str
    # with {group}, {direct}, {owner_id}, {member_id}, {device}, {owner}, {seq}
    # (the owner's message in the group) and {attachment} (on that message)
    path: str
    expected: tuple[int, int, int, int, int]  # in the order of ACTORS
    body: Callable[["World"], Any] | None = None
    # The call changes what the next caller would see: a new world per caller.
    fresh: bool = False


def _new_handle(_: "World") -> dict[str, str]:
    return {"handle": "az" + secrets.token_hex(6), "password": "long enough"}


MATRIX = [
    # users and sessions
    Row("POST", "/v1/users", "/v1/users", (201,) * 5, _new_handle),
    Row(
        "POST",
        "/v1/sessions",
        "/v1/sessions",
        (201,) * 5,
        lambda w: {"handle": w.users["owner"].handle, "password": "correct horse"},
    ),
    Row(
        "DELETE",
        "/v1/sessions/current",
        "/v1/sessions/current",
        (401,) + (204,) * 4,
        fresh=True,
    ),
    Row("GET", "/v1/users/me", "/v1/users/me", (401,) + (200,) * 4),
    Row("GET", "/v1/users/<int:user_id>", "/v1/users/{owner_id}", (401,) + (200,) * 4),
    Row("GET", "/v1/users", "/v1/users?handle={owner}", (401,) + (200,) * 4),
    Row(
        "PATCH",
        "/v1/users/me",
        "/v1/users/me",
        (401,) + (200,) * 4,
        lambda w: {"display_name": "Renamed"},
    ),
    Row(
        "PUT",
        "/v1/users/me/password",
        "/v1/users/me/password",
        (401,) + (204,) * 4,
        lambda w: {
            "current_password": "correct horse",
            "new_password": "correct horse",
        },
    ),
    Row("GET", "/v1/sessions", "/v1/sessions", (401,) + (200,) * 4),
    Row(
        "DELETE",
        "/v1/sessions/<int:session_id>",
        "/v1/sessions/{session}",
        (401, 404, 404, 404, 204),  # the owner's spare session
        fresh=True,
    ),
    Row("DELETE", "/v1/sessions", "/v1/sessions", (401,) + (204,) * 4),
    # blocks
    Row(
        "PUT", "/v1/blocks/<int:user_id>", "/v1/blocks/{spare_id}", (401,) + (204,) * 4
    ),
    Row(
        "DELETE",
        "/v1/blocks/<int:user_id>",
        "/v1/blocks/{spare_id}",
        (401,) + (204,) * 4,
    ),
    Row("GET", "/v1/blocks", "/v1/blocks", (401,) + (200,) * 4),
    # conversations
    Row(
        "POST",
        "/v1/conversations",
        "/v1/conversations",
        (401,) + (201,) * 4,
        lambda w: {"kind": "group", "title": "mine"},
    ),
    Row("GET", "/v1/conversations", "/v1/conversations", (401,) + (200,) * 4),
    Row(
        "GET",
        "/v1/conversations/<int:conversation_id>",
        "/v1/conversations/{group}",
        (401, 404, 404, 200, 200),
    ),
    Row(
        "PATCH",
        "/v1/conversations/<int:conversation_id>",
        "/v1/conversations/{group}",
        (401, 404, 404, 200, 200),
        lambda w: {"title": "renamed"},
    ),
    Row(
        "DELETE",
        "/v1/conversations/<int:conversation_id>",
        "/v1/conversations/{group}",
        (401, 404, 404, 403, 204),
        fresh=True,
    ),
    Row(
        "POST",
        "/v1/conversations/<int:conversation_id>/members",
        "/v1/conversations/{group}/members",
        (401, 404, 404, 201, 201),
        lambda w: {"user_id": w.spare_id},
        fresh=True,
    ),
    Row(
        "DELETE",
        "/v1/conversations/<int:conversation_id>/members/<int:user_id>",
        "/v1/conversations/{group}/members/{member_id}",
        (401, 404, 404, 204, 204),  # the member leaves; the owner removes
        fresh=True,
    ),
    Row(
        "POST",
        "/v1/conversations/<int:conversation_id>/accept",
        "/v1/conversations/{group}/accept",
        (401, 404, 404, 204, 204),
    ),
    Row(
        "PATCH",
        "/v1/conversations/<int:conversation_id>/me",
        "/v1/conversations/{group}/me",
        (401, 404, 404, 200, 200),
        lambda w: {"archived": False},
    ),
    # messages
    Row(
        "POST",
        "/v1/conversations/<int:conversation_id>/messages",
        "/v1/conversations/{group}/messages",
        (401, 404, 404, 201, 201),
        lambda w: {"client_msg_id": secrets.token_hex(6), "body": "hello"},
    ),
    Row(
        "GET",
        "/v1/conversations/<int:conversation_id>/messages",
        "/v1/conversations/{group}/messages",
        (401, 404, 404, 200, 200),
    ),
    Row(
        "POST",
        "/v1/conversations/<int:conversation_id>/receipts",
        "/v1/conversations/{group}/receipts",
        (401, 404, 404, 204, 204),
        lambda w: {"type": "read", "seq": 0},
    ),
    Row(
        "POST",
        "/v1/conversations/<int:conversation_id>/typing",
        "/v1/conversations/{group}/typing",
        (401, 404, 404, 204, 204),
    ),
    Row(
        "PATCH",
        "/v1/conversations/<int:conversation_id>/messages/<int:seq>",
        "/v1/conversations/{group}/messages/{seq}",
        (401, 404, 404, 403, 200),
        lambda w: {"body": "edited"},
    ),
    Row(
        "DELETE",
        "/v1/conversations/<int:conversation_id>/messages/<int:seq>",
        "/v1/conversations/{group}/messages/{seq}",
        (401, 404, 404, 403, 204),
        fresh=True,
    ),
    Row(
        "PUT",
        "/v1/conversations/<int:conversation_id>/messages/<int:seq>/reaction",
        "/v1/conversations/{group}/messages/{seq}/reaction",
        (401, 404, 404, 200, 200),
        lambda w: {"emoji": "👍"},
    ),
    Row(
        "DELETE",
        "/v1/conversations/<int:conversation_id>/messages/<int:seq>/reaction",
        "/v1/conversations/{group}/messages/{seq}/reaction",
        (401, 404, 404, 200, 200),
    ),
    # attachments: the owner's, on its message in the group
    Row(
        "POST",
        "/v1/attachments",
        "/v1/attachments?filename=a.json",
        (401,) + (201,) * 4,
        lambda w: {"any": "bytes"},
    ),
    Row(
        "GET",
        "/v1/attachments/<int:attachment_id>",
        "/v1/attachments/{attachment}",
        (401, 404, 404, 200, 200),
    ),
    Row(
        "GET",
        "/v1/attachments/<int:attachment_id>/thumbnail",
        "/v1/attachments/{attachment}/thumbnail",
        (401, 404, 404, 200, 200),
    ),
    # events, presence, devices, search
    Row("GET", "/v1/events", "/v1/events", (401,) + (200,) * 4),
    Row("GET", "/v1/presence", "/v1/presence?user_ids={owner_id}", (401,) + (200,) * 4),
    Row(
        "POST",
        "/v1/devices",
        "/v1/devices",
        (401,) + (201,) * 4,
        lambda w: {"kind": "webhook", "url": "http://127.0.0.1:9/hook"},
    ),
    Row("GET", "/v1/devices", "/v1/devices", (401,) + (200,) * 4),
    Row(
        "DELETE",
        "/v1/devices/<int:device_id>",
        "/v1/devices/{device}",
        (401, 404, 404, 404, 204),
        fresh=True,
    ),
    Row("GET", "/v1/search", "/v1/search?q=hello", (401,) + (200,) * 4),
    # operations and the page: public, except the metrics
    Row("GET", "/healthz", "/healthz", (200,) * 5),
    Row("GET", "/readyz", "/readyz", (200,) * 5),
    Row("GET", "/readyz/strict", "/readyz/strict", (200,) * 5),
    Row("GET", "/metrics", "/metrics", (401,) + (200,) * 4),
    Row("GET", "/v1/openapi.json", "/v1/openapi.json", (200,) * 5),
    Row("GET", "/", "/", (200,) * 5),
]


class World:
    """The users (made once) and one group, direct conversation and device."""

    def __init__(self, client: Any, users: dict[str, conftest.TestUser], spare_id: int):
        self.client = client
        self.users = users
        self.spare_id = spare_id
        owner = users["owner"]
        r = client.post(
            "/v1/conversations",
            headers=owner.headers,
            json={
                "kind": "group",
                "title": "matrix",
                "member_ids": [users["member"].id],
            },
        )
        assert r.status_code == 201, r.get_json()
        self.group = r.get_json()["conversation"]["id"]
        r = client.post(
            "/v1/conversations",
            headers=owner.headers,
            json={"kind": "direct", "user_id": users["other"].id},
        )
        self.direct = r.get_json()["conversation"]["id"]
        r = client.post(
            "/v1/devices",
            headers=owner.headers,
            json={"kind": "webhook", "url": "http://127.0.0.1:9/owner"},
        )
        assert r.status_code == 201, r.get_json()
        self.device = r.get_json()["device"]["id"]
        # A second session of the owner, for revoking one by id.
        r = client.post(
            "/v1/sessions",
            json={"handle": owner.handle, "password": owner.password},
        )
        spare_headers = {"Authorization": f"Bearer {r.get_json()['token']}"}
        sessions = client.get("/v1/sessions", headers=spare_headers).get_json()
        self.session = next(s["id"] for s in sessions["sessions"] if s["current"])
        r = client.post(
            "/v1/attachments?filename=dot.png",
            headers={**owner.headers, "Content-Type": "image/png"},
            data=conftest.png_bytes(),
        )
        assert r.status_code == 201, r.get_json()
        self.attachment = r.get_json()["attachment"]["id"]
        r = client.post(
            f"/v1/conversations/{self.group}/messages",
            headers=owner.headers,
            json={
                "client_msg_id": secrets.token_hex(6),
                "attachment_ids": [self.attachment],
            },
        )
        assert r.status_code == 201, r.get_json()
        self.seq = r.get_json()["message"]["seq"]

    def path(self, row: Row) -> str:
        return row.path.format(
            group=self.group,
            direct=self.direct,
            device=self.device,
            owner_id=self.users["owner"].id,
            owner=self.users["owner"].handle,
            member_id=self.users["member"].id,
            spare_id=self.spare_id,
            session=self.session,
            seq=self.seq,
            attachment=self.attachment,
        )

    def headers(self, actor: str, row: Row) -> dict[str, str]:
        if actor == "anonymous":
            return {}
        user = self.users[actor]
        if row.rule == "/v1/sessions/current":  # logging out: a token of its own
            r = self.client.post(
                "/v1/sessions", json={"handle": user.handle, "password": user.password}
            )
            return {"Authorization": f"Bearer {r.get_json()['token']}"}
        return user.headers


@pytest.fixture(scope="module")
def people(app: Any) -> dict[str, Any]:
    client = app.test_client()

    def user() -> conftest.TestUser:
        handle = conftest.unique_handle("mx")
        body = {"handle": handle, "password": "correct horse"}
        created = client.post("/v1/users", json=body).get_json()
        token = client.post("/v1/sessions", json=body).get_json()["token"]
        return conftest.TestUser(created["user"]["id"], handle, "correct horse", token)

    users = {actor: user() for actor in ACTORS if actor != "anonymous"}
    return {"client": client, "users": users, "spare": user()}


def test_every_route_has_a_row(app: Any) -> None:
    routes = {(method, rule.rule) for rule, method in openapi.documented_rules(app)}
    rows = {(row.method, row.rule) for row in MATRIX}
    assert not routes - rows, f"routes without a row in MATRIX: {sorted(routes - rows)}"
    assert not rows - routes, (
        f"rows for routes that don't exist: {sorted(rows - routes)}"
    )
    assert len(rows) == len(MATRIX), "a route has two rows"


@pytest.mark.parametrize("row", MATRIX, ids=lambda r: f"{r.method} {r.rule}")
def test_authorization(people: dict[str, Any], row: Row) -> None:
    client = people["client"]

    def world() -> World:
        return World(client, people["users"], people["spare"].id)

    shared = None if row.fresh else world()
    got = {}
    for actor in ACTORS:
        here = world() if row.fresh else shared
        assert here is not None
        body = row.body(here) if row.body else None
        r = client.open(
            here.path(row),
            method=row.method,
            headers=here.headers(actor, row),
            json=body,
            buffered=True,  # read and close (the page is a file)
        )
        got[actor] = r.status_code
        if r.status_code == 401:
            assert r.headers["WWW-Authenticate"] == "Bearer"
        if r.status_code >= 400:
            assert r.get_json()["error"]["code"], r.data
    assert got == dict(zip(ACTORS, row.expected, strict=True))
