"""The thin poll path (api/poll_path.py) answers GET /v1/events exactly as the
Flask route and its hooks would: same status, body and headers, errors included."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from werkzeug.test import Client

from messenger.api.poll_path import ThinPoll

REQUEST_ID = "same-request-id"
ALLOWED = "https://chat.example.org"


def _thin(app: Any) -> ThinPoll:
    layer = app.wsgi_app
    while not isinstance(layer, ThinPoll):
        layer = layer.app  # ProxyFix, when configured
    return layer


def _both(app: Any, url: str, headers: dict[str, str]) -> tuple[Any, Any]:
    """The same request through the thin path and through Flask alone."""
    thin = _thin(app)
    headers = {"X-Request-ID": REQUEST_ID, **headers}
    fast = Client(thin).get(url, headers=headers)
    slow = Client(thin.wsgi_app).get(url, headers=headers)
    return fast, slow


def _same(fast: Any, slow: Any) -> None:
    assert fast.status == slow.status
    assert fast.get_data() == slow.get_data()
    assert sorted(fast.headers.items()) == sorted(slow.headers.items())


def _cases(cursor: str, other_cursor: str) -> list[tuple[str, dict[str, str]]]:
    return [
        ("/v1/events", {}),
        (f"/v1/events?after={cursor}&timeout=0", {}),
        (f"/v1/events?after={cursor}&timeout=0&limit=1", {}),
        (f"/v1/events?after={cursor}&timeout=0.0&limit=500", {}),
        (f"/v1/events?after={other_cursor}&timeout=0&_=123", {}),
        (f"/v1/events?timeout=0&after={cursor}&after=0", {}),
        (f"/v1/events?after=%3{cursor[-1]}&timeout=0", {}),
        (f"/v1/events?after={int(cursor) + 1000}&timeout=0", {}),
        ("/v1/events?after=abc&timeout=abc&limit=0", {}),
        ("/v1/events?after=1&timeout=56", {}),
        ("/v1/events?after=1&timeout=nan", {}),
        ("/v1/events?after=1&timeout=1e9", {}),
        ("/v1/events?after=1&limit=501", {}),
        ("/v1/events?after=1&limit=1.5", {}),
        ("/v1/events?after=-5", {}),
        ("/v1/events?after=", {}),
        ("/v1/events?after=1&x=%00", {}),
        (f"/v1/events?after={cursor}&timeout=0", {"Origin": ALLOWED}),
        (f"/v1/events?after={cursor}&timeout=0", {"Origin": "https://else.example"}),
    ]


def test_thin_path_answers_as_the_route_does(
    app: Any, make_user: Any, chat: Any, override_settings: Any
) -> None:
    alice, bob = make_user(), make_user()
    cursor = chat.head(alice)
    conversation_id = chat.direct(alice, bob)
    for n in range(3):
        chat.send(alice, conversation_id, f"hello {n}")
    other_cursor = chat.head(bob)
    for origins in ((), (ALLOWED,)):
        override_settings(cors_origins=origins)
        for url, extra in _cases(cursor, other_cursor):
            fast, slow = _both(app, url, {**alice.headers, **extra})
            _same(fast, slow)
    fast, slow = _both(app, f"/v1/events?after={cursor}", {})
    assert fast.status_code == 401
    _same(fast, slow)
    fast, slow = _both(
        app, f"/v1/events?after={cursor}", {"Authorization": "Bearer nope"}
    )
    assert fast.status_code == 401
    _same(fast, slow)


def test_thin_path_answers_events(app: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cursor = chat.head(bob)
    conversation_id = chat.direct(alice, bob)
    chat.send(alice, conversation_id, "hi bob")
    bodies: list[str] = []
    for _ in range(5):
        r = Client(_thin(app)).get(
            f"/v1/events?after={cursor}&timeout=5", headers=bob.headers
        )
        assert r.status_code == 200
        page = json.loads(r.get_data())
        bodies += [e["message"]["body"] for e in page["events"] if "message" in e]
        cursor = page["cursor"]
        if bodies:
            break
    assert bodies == ["hi bob"]


def test_thin_path_logs_and_counts_like_the_route(
    app: Any, make_user: Any, chat: Any, caplog: pytest.LogCaptureFixture
) -> None:
    alice = make_user()
    cursor = chat.head(alice)
    with caplog.at_level(logging.INFO, logger="messenger.access"):
        Client(_thin(app)).get(
            f"/v1/events?after={cursor}&timeout=0",
            headers={**alice.headers, "X-Request-ID": "thin-1"},
        )
    (line,) = [r for r in caplog.records if r.name == "messenger.access"]
    assert line.request_id == "thin-1"  # type: ignore[attr-defined]
    assert line.user_id == alice.id  # type: ignore[attr-defined]
    assert (line.route, line.method, line.status) == ("/v1/events", "GET", 200)  # type: ignore[attr-defined]
