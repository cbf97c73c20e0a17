"""CORS: nothing allowed by default; listed origins get preflights and headers."""

from typing import Any

import pytest

ALLOWED = "https://chat.example.org"
OTHER = "https://evil.example.net"


@pytest.fixture
def cors_origins(override_settings: Any) -> Any:
    """Allow these origins for one test: cors_origins("https://a", ...)."""

    def allow(*origins: str) -> None:
        override_settings(cors_origins=tuple(origins))

    return allow


def _preflight(client: Any, path: str, origin: str, method: str = "POST") -> Any:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def _cors_headers(response: Any) -> dict[str, str]:
    return {
        k: v for k, v in response.headers.items() if k.startswith("Access-Control-")
    }


def test_nothing_is_allowed_by_default(client: Any, make_user: Any) -> None:
    user = make_user()
    r = client.get("/v1/users/me", headers={**user.headers, "Origin": ALLOWED})
    assert r.status_code == 200
    assert _cors_headers(r) == {}
    assert "Origin" not in r.headers.get("Vary", "")


def test_preflight_by_default_gets_no_cors_headers(client: Any) -> None:
    r = _preflight(client, "/v1/conversations", ALLOWED)
    assert _cors_headers(r) == {}


def test_preflight_from_allowed_origin(client: Any, cors_origins: Any) -> None:
    cors_origins(ALLOWED, "http://localhost:3000")
    r = _preflight(client, "/v1/conversations/12/messages", ALLOWED)
    assert r.status_code == 204
    assert r.data == b""
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED
    methods = {m.strip() for m in r.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= methods
    allowed_headers = {
        h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert {
        "authorization",
        "content-type",
        "x-request-id",
        "range",
        "if-none-match",
    } <= allowed_headers
    assert int(r.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in r.headers["Vary"]
    # Bearer tokens, never cookies: no credentials mode.
    assert "Access-Control-Allow-Credentials" not in r.headers


def test_preflight_for_a_method_the_route_lacks_is_not_a_405(
    client: Any, cors_origins: Any
) -> None:
    """/v1/events has only GET; the preflight still answers (the real call 405s)."""
    cors_origins(ALLOWED)
    r = _preflight(client, "/v1/events", ALLOWED, method="DELETE")
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_preflight_from_other_origin_gets_no_cors_headers(
    client: Any, cors_origins: Any
) -> None:
    cors_origins(ALLOWED)
    r = _preflight(client, "/v1/conversations", OTHER)
    assert _cors_headers(r) == {}
    assert r.status_code != 204


def test_options_without_origin_behaves_as_before(
    client: Any, cors_origins: Any
) -> None:
    cors_origins(ALLOWED)
    r = client.options("/v1/conversations")
    assert r.status_code == 200
    assert {"GET", "POST"} <= {m.strip() for m in r.headers["Allow"].split(",")}
    assert _cors_headers(r) == {}


def test_allowed_origin_can_read_answers_and_errors(
    client: Any, make_user: Any, cors_origins: Any
) -> None:
    cors_origins(ALLOWED)
    user = make_user()
    ok = client.get("/v1/users/me", headers={**user.headers, "Origin": ALLOWED})
    assert ok.status_code == 200
    assert ok.headers["Access-Control-Allow-Origin"] == ALLOWED
    exposed = {
        h.strip().lower()
        for h in ok.headers["Access-Control-Expose-Headers"].split(",")
    }
    assert {"retry-after", "x-request-id", "content-range", "etag"} <= exposed
    assert "Origin" in ok.headers["Vary"]
    # Errors too: the page must be able to read a 401's JSON body.
    denied = client.get("/v1/users/me", headers={"Origin": ALLOWED})
    assert denied.status_code == 401
    assert denied.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert denied.get_json()["error"]["code"] == "unauthorized"


def test_disallowed_origin_gets_no_allow_origin(
    client: Any, make_user: Any, cors_origins: Any
) -> None:
    cors_origins(ALLOWED)
    user = make_user()
    r = client.get("/v1/users/me", headers={**user.headers, "Origin": OTHER})
    assert r.status_code == 200  # the server answers; the browser hides it
    assert _cors_headers(r) == {}
    assert "Origin" in r.headers["Vary"]


def test_wildcard_allows_any_origin(client: Any, cors_origins: Any) -> None:
    cors_origins("*")
    r = _preflight(client, "/v1/sessions", OTHER)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == OTHER


def test_origins_are_parsed_from_the_environment() -> None:
    from messenger.settings import ConfigError, load

    settings = load({"MESSENGER_CORS_ORIGINS": f" {ALLOWED}/ , http://localhost:3000"})
    assert settings.cors_origins == (ALLOWED, "http://localhost:3000")
    assert load({}).cors_origins == ()
    with pytest.raises(ConfigError, match="MESSENGER_CORS_ORIGINS"):
        load({"MESSENGER_CORS_ORIGINS": "chat.example.org/path"})
