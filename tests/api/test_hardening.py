"""Hostile input and resource bounds, what /metrics and the logs show, security
basics, and a regression test for each failure the fuzzer (tests/api/test_fuzz.py)
found."""

import io
import json
import logging
import re
import secrets
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import gevent
import pytest

from messenger import logs, runtime
from messenger.api import limits

# ---- regressions found by the fuzzer -------------------------------------------


def test_wrong_password_prints_no_traceback(
    client: Any, make_user: Any, capfd: Any
) -> None:
    # The password check runs in gevent's thread pool, whose hub printed every
    # exception raised there (a mismatch) as a traceback on stderr.
    alice = make_user()
    capfd.readouterr()
    r = client.post(
        "/v1/sessions", json={"handle": alice.handle, "password": "nope nope"}
    )
    assert r.status_code == 401
    err = capfd.readouterr().err
    assert "Traceback" not in err and "VerifyMismatchError" not in err


def test_integral_numbers_are_integers(client: Any, make_user: Any, chat: Any) -> None:
    # JSON Schema, and so the OpenAPI document, says 3.0 is an integer.
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    chat.send(alice, cid)
    url = f"/v1/conversations/{cid}/receipts"
    r = client.post(url, headers=bob.headers, json={"type": "read", "seq": 1.0})
    assert r.status_code == 204
    for seq in (1.5, True, "1", 1e300):
        r = client.post(url, headers=bob.headers, json={"type": "read", "seq": seq})
        assert r.status_code == 422, (seq, r.get_json())


def test_conversation_list_cursor_is_checked_by_its_schema(
    client: Any, make_user: Any
) -> None:
    alice = make_user()
    for cursor in ("abc", "1.2.3", "99999999999999999999.1", "1." + "9" * 30, "١.١"):
        r = client.get(f"/v1/conversations?before={cursor}", headers=alice.headers)
        assert r.status_code == 422, (cursor, r.get_json())
        assert "before" in r.get_json()["error"]["fields"]
    r = client.get("/v1/conversations?before=1700000000000000.5", headers=alice.headers)
    assert r.status_code == 200


# ---- resource limits -----------------------------------------------------------


def test_body_over_64_kib_is_refused(client: Any, make_user: Any, chat: Any) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    url = f"/v1/conversations/{cid}/messages"
    big = json.dumps({"client_msg_id": "big", "body": "x" * (65 * 1024)})
    r = client.post(
        url, headers=alice.headers, data=big, content_type="application/json"
    )
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "payload_too_large"
    # Also without a Content-Length (chunked): the read stops at the limit.
    r = client.post(
        url,
        headers={**alice.headers, "Transfer-Encoding": "chunked"},
        input_stream=io.BytesIO(big.encode()),
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 413


def test_deeply_nested_json_is_refused(client: Any, make_user: Any) -> None:
    alice = make_user()
    deep = "[" * 33 + "]" * 33
    r = client.post(
        "/v1/conversations",
        headers=alice.headers,
        data=deep,
        content_type="application/json",
    )
    assert r.status_code == 400
    assert "nested" in r.get_json()["error"]["message"]
    r = client.post(
        "/v1/conversations",
        headers=alice.headers,
        data="[" * 60_000,
        content_type="application/json",
    )
    assert r.status_code == 400


@pytest.mark.parametrize(
    "query", ["timeout=56", "timeout=-1", "timeout=1e9", "limit=0", "limit=501"]
)
def test_poll_bounds_are_422_not_clamped(
    client: Any, make_user: Any, query: str
) -> None:
    alice = make_user()
    r = client.get(f"/v1/events?after=0&{query}", headers=alice.headers)
    assert r.status_code == 422, r.get_json()


def test_oldest_poll_is_answered_when_a_user_holds_too_many(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice = make_user()
    cursor = chat.head(alice)
    cap = runtime.get().settings.max_polls_per_user
    answered: list[int] = []

    def poll(n: int) -> None:
        chat.poll(alice, cursor, timeout=5)
        answered.append(n)

    started = time.monotonic()
    jobs = []
    for n in range(cap + 1):
        jobs.append(gevent.spawn(poll, n))
        gevent.sleep(0.05)  # in order: poll 0 is the oldest
    gevent.joinall(jobs[:1], timeout=3)
    assert answered == [0] and time.monotonic() - started < 3
    gevent.joinall(jobs, timeout=10)
    assert sorted(answered) == list(range(cap + 1))


def test_a_body_that_never_arrives_frees_the_worker(
    client: Any, make_user: Any, monkeypatch: Any
) -> None:
    alice = make_user()
    monkeypatch.setattr(limits, "BODY_READ_TIMEOUT_SECS", 0.3)

    class Trickle(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            gevent.sleep(10)  # a slow-loris client: the rest never comes
            return 0

    started = time.monotonic()
    r = client.post(
        "/v1/conversations",
        headers=alice.headers,
        content_type="application/json",
        environ_overrides={
            "wsgi.input": io.BufferedReader(Trickle()),
            "CONTENT_LENGTH": "50",
        },
    )
    assert r.status_code == 400
    assert "did not arrive" in r.get_json()["error"]["message"]
    assert time.monotonic() - started < 3


# ---- metrics -------------------------------------------------------------------


def test_metrics_need_a_token(client: Any, make_user: Any) -> None:
    alice = make_user()
    client.get("/v1/users/me", headers=alice.headers)
    assert client.get("/metrics").status_code == 401
    r = client.get("/metrics", headers=alice.headers)
    assert r.status_code == 200 and r.mimetype == "text/plain"
    text = r.get_data(as_text=True)
    for name in (
        'messenger_requests_total{method="GET",route="/v1/users/me",status="200"}',
        'messenger_request_seconds_bucket{le="0.005",route="/v1/users/me"}',
        "messenger_held_polls",
        "messenger_wakes_sent_total",
        "messenger_wakes_received_total",
        "messenger_fanout_lag_seconds_bucket",
        "messenger_outbox_backlog",
        "messenger_push_queue_depth",
        "messenger_db_pool_wait_seconds_bucket",
        "messenger_redis_errors_total",
    ):
        assert name in text, name


def test_metrics_token_of_the_operator(client: Any, override_settings: Any) -> None:
    token = secrets.token_urlsafe(24)
    override_settings(metrics_token=token)
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}x"})
    assert r.status_code == 401


# ---- logs ----------------------------------------------------------------------


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log line (JSON, as in production) of the test, at INFO."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RequestIdFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_one_json_line_per_request_and_no_secrets(
    client: Any, chat: Any, log_lines: io.StringIO
) -> None:
    handle = "logs_" + secrets.token_hex(4)
    password = "pw-" + secrets.token_hex(8)
    body = "secret body " + secrets.token_hex(8)
    assert (
        client.post(
            "/v1/users", json={"handle": handle, "password": password}
        ).status_code
        == 201
    )
    r = client.post(
        "/v1/sessions",
        json={"handle": handle, "password": password},
        headers={"X-Request-ID": "login-42"},
    )
    assert r.headers["X-Request-ID"] == "login-42"
    token = r.get_json()["token"]
    user_id = r.get_json()["user"]["id"]
    headers = {"Authorization": f"Bearer {token}"}
    peer = client.post(
        "/v1/users", json={"handle": handle + "_p", "password": password}
    ).get_json()["user"]["id"]
    cid = client.post(
        "/v1/conversations", headers=headers, json={"kind": "direct", "user_id": peer}
    ).get_json()["conversation"]["id"]
    r = client.post(
        f"/v1/conversations/{cid}/messages",
        headers=headers,
        json={"client_msg_id": "log1", "body": body},
    )
    generated_id = r.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated_id)
    client.post("/v1/sessions", json={"handle": handle, "password": password + "x"})
    client.get(
        f"/v1/users?handle={handle}", headers={"Authorization": "Bearer " + password}
    )
    client.delete("/v1/sessions/current", headers=headers)

    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "messenger.access"]
    assert len(access) == 8
    for line in access:
        assert {"request_id", "route", "method", "status", "duration_ms"} <= set(line)
    assert access[1]["request_id"] == "login-42"
    send = next(line for line in access if line["request_id"] == generated_id)
    assert send["user_id"] == user_id
    assert send["route"] == "/v1/conversations/<int:conversation_id>/messages"
    assert send["status"] == 201
    text = log_lines.getvalue()
    for secret in (password, token, body):
        assert secret not in text


# ---- security basics -----------------------------------------------------------


def test_page_security_headers(client: Any) -> None:
    r = client.get("/", buffered=True)
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
    assert directives["script-src"] == "'self'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"


def test_page_has_no_inline_script(client: Any) -> None:
    html = client.get("/", buffered=True).get_data(as_text=True)
    problems: list[str] = []

    class Check(HTMLParser):
        in_script = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, Any]]) -> None:
            names = dict(attrs)
            problems.extend(f"{tag} {a}" for a in names if a.startswith("on"))
            if tag == "script":
                self.in_script = True
                if not names.get("src"):
                    problems.append("script without src")
            if any(
                str(v or "").strip().lower().startswith("javascript:")
                for v in names.values()
            ):
                problems.append(f"javascript: URL in {tag}")

        def handle_endtag(self, tag: str) -> None:
            if tag == "script":
                self.in_script = False

        def handle_data(self, data: str) -> None:
            if self.in_script and data.strip():
                problems.append("inline script text")

    Check().feed(html)
    assert not problems


def test_login_does_not_reveal_whether_a_handle_exists(
    client: Any, make_user: Any
) -> None:
    alice = make_user()
    ghost = "ghost_" + secrets.token_hex(4)

    def attempt(handle: str) -> tuple[float, Any]:
        started = time.perf_counter()
        r = client.post(
            "/v1/sessions", json={"handle": handle, "password": "guess 1234"}
        )
        return time.perf_counter() - started, r

    (_, known), (_, unknown) = attempt(alice.handle), attempt(ghost)
    assert known.status_code == unknown.status_code == 401
    assert known.get_json() == unknown.get_json()
    assert known.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]
    # Both verify a password hash (a dummy one for the unknown handle): neither
    # answer is the cheap one. Medians of a few tries, with a generous bound.
    known_secs = sorted(attempt(alice.handle)[0] for _ in range(5))[2]
    unknown_secs = sorted(attempt(ghost)[0] for _ in range(5))[2]
    assert 0.33 < unknown_secs / known_secs < 3


def test_password_hashing_cost_is_the_documented_one(
    production_password_hasher: Any,
) -> None:
    # services/accounts.py documents Argon2id, 19 MiB, 2 passes, 1 lane.
    stored = production_password_hasher.hash("some password")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_nul_characters_are_refused_not_a_500(
    client: Any, make_user: Any, chat: Any
) -> None:
    # Found by the fuzzer: PostgreSQL text can't hold NUL; the search answered 500.
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    r = client.get("/v1/search?q=a%00b", headers=alice.headers)
    assert r.status_code == 422 and "q" in r.get_json()["error"]["fields"]
    r = client.post(
        f"/v1/conversations/{cid}/messages",
        headers=alice.headers,
        json={"client_msg_id": "nul", "body": "a\x00b"},
    )
    assert r.status_code == 422 and "body" in r.get_json()["error"]["fields"]
    r = client.post(
        "/v1/sessions", json={"handle": "a\x00", "password": "x\x00yzzzzzz"}
    )
    assert r.status_code == 422
    r = client.post(
        "/v1/conversations",
        headers=alice.headers,
        json={"kind": "group", "title": "t", "member_ids": [], "\x00": 1},
    )
    assert r.status_code == 422


def test_search_words_may_follow_a_newline(client: Any, make_user: Any) -> None:
    # Found by the fuzzer: q's "at least one word" check only looked before the
    # first newline.
    alice = make_user()
    r = client.get("/v1/search?q=%0Ahello", headers=alice.headers)
    assert r.status_code == 200, r.get_json()
    for blank in ("%20%0A", "%1C", "%EF%BB%BF"):  # space, newline, \x1c, the BOM
        r = client.get(f"/v1/search?q={blank}", headers=alice.headers)
        assert r.status_code == 422, blank


def test_lone_surrogates_are_422_naming_the_field_on_any_text_field(
    client: Any, make_user: Any, chat: Any
) -> None:
    # Checked against the running service: "\ud800" in a display name or a body
    # answered 500 (UTF-8 can't encode it, so neither can PostgreSQL).
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    cases = [
        (
            "/v1/users",
            None,
            {"handle": "surr_user", "password": "x" * 10, "display_name": "a\ud800b"},
            "display_name",
        ),
        (
            f"/v1/conversations/{cid}/messages",
            alice.headers,
            {"client_msg_id": "s1", "body": "x\udfffy"},
            "body",
        ),
        (
            "/v1/conversations",
            alice.headers,
            {"kind": "group", "title": "\udc00", "member_ids": []},
            "title",
        ),
        (
            "/v1/sessions",
            None,
            {"handle": alice.handle, "password": "\ud83d" * 9},
            "password",
        ),
        (
            "/v1/devices",
            alice.headers,
            {"kind": "webhook", "url": "http://127.0.0.1/\ud800"},
            "url",
        ),
    ]
    for url, headers, body, field in cases:
        raw = json.dumps(body)  # ensure_ascii: "\ud800" travels as an escape
        r = client.post(
            url, headers=headers or {}, data=raw, content_type="application/json"
        )
        assert r.status_code == 422, (url, r.status_code, r.get_data())
        assert field in r.get_json()["error"]["fields"], r.get_json()
    # A valid astral character (a surrogate pair in JSON) is still fine.
    r = client.post(
        f"/v1/conversations/{cid}/messages",
        headers=alice.headers,
        data=json.dumps({"client_msg_id": "s2", "body": "ok \U0001f600"}),
        content_type="application/json",
    )
    assert r.status_code == 201 and r.get_json()["message"]["body"] == "ok \U0001f600"


def test_metrics_method_label_is_bounded(client: Any, make_user: Any) -> None:
    # Any token is a method to the HTTP parser: unauthenticated "X1", "X2", ...
    # each made a labelled series of its own.
    from messenger import metrics

    def series() -> set[tuple[str, ...]]:
        return {
            tuple(sorted(s.labels.items()))
            for m in metrics.REQUESTS.collect()
            for s in m.samples
        }

    before = series()
    for i in range(20):
        client.open("/healthz", method=f"BOGUS{i}{secrets.token_hex(3).upper()}")
    methods = {dict(s)["method"] for s in series() - before}
    assert methods <= {"other"}, methods
