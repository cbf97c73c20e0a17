"""Accounts: register, login, logout, lookups, and their errors (API.md)."""

from typing import Any

from tests.conftest import unique_handle


def test_register_returns_user(client: Any) -> None:
    handle = unique_handle("reg")
    r = client.post(
        "/v1/users",
        json={"handle": handle, "password": "hunter2hunter2", "display_name": "Reg"},
    )
    assert r.status_code == 201
    user = r.get_json()["user"]
    assert user["handle"] == handle and user["display_name"] == "Reg"
    assert isinstance(user["id"], int)
    assert user["created_at"].endswith("Z") and "password" not in user


def test_display_name_defaults_to_handle(client: Any) -> None:
    handle = unique_handle("dn")
    r = client.post("/v1/users", json={"handle": handle, "password": "password1"})
    assert r.get_json()["user"]["display_name"] == handle


def test_taken_handle_is_409(client: Any, make_user: Any) -> None:
    user = make_user()
    r = client.post("/v1/users", json={"handle": user.handle, "password": "password1"})
    assert r.status_code == 409
    assert r.get_json()["error"]["code"] == "conflict"


def test_invalid_bodies_are_422_with_fields(client: Any) -> None:
    cases = [
        ({"handle": "AB", "password": "password1"}, "handle"),
        ({"handle": "ok_handle", "password": "short"}, "password"),
        (
            {"handle": "ok_handle", "password": "password1", "display_name": "x" * 65},
            "display_name",
        ),
        ({"handle": "ok_handle", "password": "password1", "admin": True}, "admin"),
        ({"password": "password1"}, "handle"),
        ({"handle": 5, "password": "password1"}, "handle"),
    ]
    for body, field in cases:
        r = client.post("/v1/users", json=body)
        assert r.status_code == 422, body
        error = r.get_json()["error"]
        assert error["code"] == "validation_failed"
        assert field in error["fields"], (body, error)


def test_malformed_json_and_wrong_type_are_400(client: Any) -> None:
    r = client.post("/v1/users", data="{not json", content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_request"
    r = client.post("/v1/users", data="handle=x", content_type="text/plain")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "bad_request"
    r = client.post("/v1/users", json=[1, 2])
    assert r.status_code == 422


def test_deeply_nested_json_is_400_not_500(client: Any) -> None:
    r = client.post(
        "/v1/users", data="[" * 100_00 + "]" * 100_00, content_type="application/json"
    )
    assert r.status_code == 400


def test_oversized_body_is_413(client: Any) -> None:
    r = client.post(
        "/v1/users",
        data='{"handle": "' + "a" * 70_000 + '"}',
        content_type="application/json",
    )
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "payload_too_large"


def test_login_and_me(client: Any, make_user: Any) -> None:
    user = make_user(display_name="Alice")
    r = client.get("/v1/users/me", headers=user.headers)
    assert r.status_code == 200
    assert r.get_json()["user"]["id"] == user.id
    assert r.get_json()["user"]["display_name"] == "Alice"


def test_wrong_password_and_unknown_handle_answer_the_same(
    client: Any, make_user: Any
) -> None:
    user = make_user()
    wrong = client.post(
        "/v1/sessions", json={"handle": user.handle, "password": "not the password"}
    )
    unknown = client.post(
        "/v1/sessions",
        json={"handle": unique_handle("nobody"), "password": "not the password"},
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert wrong.headers["WWW-Authenticate"] == "Bearer"


def test_logout_revokes_token_at_once(client: Any, make_user: Any) -> None:
    user = make_user()
    assert (
        client.delete("/v1/sessions/current", headers=user.headers).status_code == 204
    )
    r = client.get("/v1/users/me", headers=user.headers)
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"] == "Bearer"


def test_missing_and_garbage_tokens_are_401(client: Any) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
    ):
        r = client.get("/v1/users/me", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_user_by_id_and_handle(client: Any, make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    r = client.get(f"/v1/users/{bob.id}", headers=alice.headers)
    assert r.status_code == 200 and r.get_json()["user"]["handle"] == bob.handle
    r = client.get(f"/v1/users?handle={bob.handle}", headers=alice.headers)
    assert r.status_code == 200 and r.get_json()["user"]["id"] == bob.id
    r = client.get("/v1/users?handle=nobody_here_xyz", headers=alice.headers)
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.get("/v1/users/999999999", headers=alice.headers)
    assert r.status_code == 404
    r = client.get("/v1/users/99999999999999999999999", headers=alice.headers)
    assert r.status_code == 404


def test_unknown_route_and_method_are_json(client: Any) -> None:
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.put("/v1/users")
    assert r.status_code == 405
    assert r.get_json()["error"]["code"] == "method_not_allowed"


def test_health_and_ready(client: Any) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200, r.get_json()


def test_request_id_is_echoed(client: Any) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    r = client.get("/healthz")
    assert len(r.headers["X-Request-ID"]) == 16
