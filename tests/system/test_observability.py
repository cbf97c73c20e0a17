"""What the operator sees from a real gunicorn: /metrics adds up every worker,
and the log is one JSON line per request with no secrets in it."""

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Services
from tests.system.conftest import Api, Server, start_gunicorn

METRICS_TOKEN = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def observed(
    services: Services, settings: Any, tmp_path_factory: Any
) -> Iterator[Server]:
    root: Path = tmp_path_factory.mktemp("observed")
    server = start_gunicorn(
        services,
        root,
        workers=2,
        MESSENGER_LOG_LEVEL="INFO",
        MESSENGER_METRICS_TOKEN=METRICS_TOKEN,
    )
    try:
        yield server
    finally:
        server.stop()


def scrape(server: Server) -> str:
    r = requests.get(
        server.url + "/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    return r.text


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        found = (
            ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        )
        if metric == name and found == wanted:
            return float(value)
    return 0.0


def test_metrics_add_up_every_worker(observed: Server) -> None:
    before = sample(
        scrape(observed),
        "messenger_requests_total",
        route="/healthz",
        method="GET",
        status="200",
    )
    # New connections each time: the kernel spreads them over both workers.
    for _ in range(40):
        assert requests.get(observed.url + "/healthz", timeout=10).status_code == 200
    text = scrape(observed)
    after = sample(
        text, "messenger_requests_total", route="/healthz", method="GET", status="200"
    )
    assert after - before == 40
    assert sample(text, "messenger_request_seconds_count", route="/healthz") >= 40
    assert "messenger_held_polls" in text
    assert requests.get(observed.url + "/metrics", timeout=10).status_code == 401


def test_log_is_json_lines_without_secrets(observed: Server) -> None:
    api = Api(observed.url)
    handle = "obs_" + secrets.token_hex(4)
    password = "pw-" + secrets.token_hex(10)
    body = "private words " + secrets.token_hex(8)
    requests.post(
        observed.url + "/v1/users",
        json={"handle": handle, "password": password},
        timeout=10,
    )
    r = requests.post(
        observed.url + "/v1/sessions",
        json={"handle": handle, "password": password},
        headers={"X-Request-ID": "obs-login-1"},
        timeout=10,
    )
    token = r.json()["token"]
    assert r.headers["X-Request-ID"] == "obs-login-1"
    peer = api.user()
    headers = {"Authorization": f"Bearer {token}"}
    cid = requests.post(
        observed.url + "/v1/conversations",
        headers=headers,
        json={"kind": "direct", "user_id": peer.id},
        timeout=10,
    ).json()["conversation"]["id"]
    r = requests.post(
        f"{observed.url}/v1/conversations/{cid}/messages",
        headers=headers,
        json={"client_msg_id": "obs1", "body": body},
        timeout=10,
    )
    assert r.status_code == 201
    requests.post(
        observed.url + "/v1/sessions",
        json={"handle": handle, "password": password + "!"},
        timeout=10,
    )
    requests.delete(observed.url + "/v1/sessions/current", headers=headers, timeout=10)

    log = observed.log_path.read_text(errors="replace")
    for secret in (password, token, body):
        assert secret not in log
    assert "Traceback" not in log
    access = []
    for line in log.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record["logger"] == "messenger.access":
                access.append(record)
    login = next(a for a in access if a["request_id"] == "obs-login-1")
    assert login["route"] == "/v1/sessions" and login["status"] == 201
    sends = [
        a for a in access if a["route"].endswith("/messages") and a["method"] == "POST"
    ]
    assert sends and sends[-1]["user_id"] == r.json()["message"]["sender_id"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]{1,64}", a["request_id"]) for a in access)
    assert all(isinstance(a["duration_ms"], float | int) for a in access)


def test_gunicorn_refuses_oversized_request_lines_and_headers(observed: Server) -> None:
    # gunicorn.conf.py: limit_request_line, limit_request_fields(_size).
    r = requests.get(observed.url + "/healthz?" + "a" * 5000, timeout=10)
    assert r.status_code in (400, 414)
    r = requests.get(
        observed.url + "/healthz",
        headers={f"X-H{n}": "v" for n in range(80)},
        timeout=10,
    )
    assert r.status_code in (400, 431)
    r = requests.get(
        observed.url + "/healthz", headers={"X-Big": "v" * 9000}, timeout=10
    )
    assert r.status_code in (400, 431)
    assert requests.get(observed.url + "/healthz", timeout=10).status_code == 200
