"""deploy/nginx.conf in front of gunicorn: long polls, sends, gzip, client address.

A real nginx (Debian's package) runs the shipped config with only its two
documented substitutions (listen port, gunicorn address).
"""

import hashlib
import http.client
import json
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import pytest
import requests

from messenger.embedded import free_port
from messenger.settings import POLL_TIMEOUT_MAX_SECS
from tests.conftest import Services, require_program
from tests.system.conftest import ROOT, Api, Server, start_gunicorn

NGINX_CONF = ROOT / "deploy" / "nginx.conf"
# Held to its full timeout through nginx: long enough to outlast any short default
# timeout on the way (nginx's proxy_read_timeout defaults to 60 s, but e.g. a send or
# keep-alive timeout of a few seconds would show), short enough for CI.
FULL_POLL_SECS = 8
# The two substitution points (directives, not the comments that mention them).
LISTEN = re.compile(r"^(\s*)listen 8080;", re.M)
UPSTREAM = re.compile(r"^(\s*)server 127\.0\.0\.1:8000;", re.M)
ATTACHMENTS = re.compile(r"^(\s*)alias /var/lib/messenger/attachments/;", re.M)


def _location_block(conf: str, location: str) -> str:
    start = conf.index(f"location {location} {{")
    return conf[start : conf.index("}", start)]


def _secs(value: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m)?", value)
    assert match, value
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_config_lets_the_longest_poll_finish() -> None:
    conf = NGINX_CONF.read_text()
    events = _location_block(conf, "= /v1/events")
    read_timeout = re.search(r"proxy_read_timeout\s+(\w+);", events)
    assert read_timeout, "the /v1/events location sets no proxy_read_timeout"
    assert _secs(read_timeout[1]) > POLL_TIMEOUT_MAX_SECS + 5
    assert re.search(r"proxy_buffering\s+off;", events)
    # Browser keep-alive outlasts a poll, so a tab re-polls on the same connection.
    keepalive = re.search(r"^\s*keepalive_timeout\s+(\w+);", conf, re.M)
    assert keepalive and _secs(keepalive[1]) > POLL_TIMEOUT_MAX_SECS
    # Idle upstream connections are dropped by nginx before gunicorn drops them
    # (gunicorn.conf.py keeps them poll max + 10 s): no POST on a closing socket.
    upstream = conf[conf.index("upstream messenger {") :]
    upstream = upstream[: upstream.index("}")]
    idle = re.search(r"keepalive_timeout\s+(\w+);", upstream)
    assert idle and _secs(idle[1]) < POLL_TIMEOUT_MAX_SECS + 10
    # Exactly one of each substitution point, as the file's header promises.
    assert len(LISTEN.findall(conf)) == 1
    assert len(UPSTREAM.findall(conf)) == 1
    assert len(ATTACHMENTS.findall(conf)) == 1


@dataclass
class Nginx:
    url: str
    port: int
    prefix: Path
    process: subprocess.Popen  # type: ignore[type-arg]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: workers finish
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def start_nginx(upstream_port: int, attachments_dir: Path | None = None) -> Nginx:
    program = require_program("nginx", "nginx")
    # Under /var/tmp and world-readable: as root, nginx's workers run as `nobody`
    # and must reach the temp folders nginx creates under the prefix.
    prefix = Path(tempfile.mkdtemp(prefix="messenger-nginx-", dir="/var/tmp"))
    prefix.chmod(0o755)
    port = free_port()
    conf = NGINX_CONF.read_text()
    conf = LISTEN.sub(rf"\g<1>listen 127.0.0.1:{port};", conf)
    conf = UPSTREAM.sub(rf"\g<1>server 127.0.0.1:{upstream_port};", conf)
    if attachments_dir is not None:
        conf = ATTACHMENTS.sub(rf"\g<1>alias {attachments_dir}/;", conf)
    # One worker is plenty here and starts faster than `auto` on a big machine.
    conf = conf.replace("worker_processes auto;", "worker_processes 2;")
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    args = [
        program,
        "-p",
        f"{prefix}/",
        "-c",
        str(conf_path),
        "-e",
        str(prefix / "error.log"),
    ]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [*args, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    nginx = Nginx(f"http://127.0.0.1:{port}", port, prefix, process)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited: {nginx.error_log()}")
        try:
            if requests.get(nginx.url + "/healthz", timeout=1).status_code == 200:
                return nginx
        except requests.RequestException:
            pass
        time.sleep(0.1)
    nginx.stop()
    raise AssertionError(f"nginx did not answer: {nginx.error_log()}")


@dataclass
class Proxied:
    gunicorn: Server
    nginx: Nginx
    api: Api


@pytest.fixture(scope="module")
def proxied(
    services: Services, settings: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxied]:
    require_program("nginx", "nginx")  # before starting anything
    root = tmp_path_factory.mktemp("nginx")
    gunicorn = start_gunicorn(
        services,
        root,
        workers=2,
        MESSENGER_TRUSTED_PROXIES="1",
        MESSENGER_LOG_LEVEL="INFO",
        MESSENGER_ATTACHMENT_ACCEL_REDIRECT="/_attachments/",
    )
    try:
        nginx = start_nginx(
            int(gunicorn.url.rsplit(":", 1)[1]),
            Path(services.env()["MESSENGER_DATA_DIR"]) / "attachments",
        )
        try:
            yield Proxied(gunicorn, nginx, Api(nginx.url))
        finally:
            nginx.stop()
            assert nginx.process.returncode is not None
            shutil.rmtree(nginx.prefix, ignore_errors=True)
    finally:
        gunicorn.stop()


def test_long_poll_is_woken_by_a_send_through_nginx(proxied: Proxied) -> None:
    api = proxied.api
    alice, bob = api.user(), api.user()
    cid = api.direct(alice, bob)
    cursor = api.head(bob)
    poll = gevent.spawn(api.poll, bob, cursor, 30)
    gevent.sleep(1)  # the poll is held (no answer yet)
    assert not poll.ready()
    started = time.monotonic()
    sent = api.send(alice, cid, "through nginx")
    assert sent.status_code == 201, sent.text
    answer = poll.get(timeout=10)
    assert time.monotonic() - started < 2
    assert answer.status_code == 200
    bodies = [
        e["message"]["body"] for e in answer.json()["events"] if e["type"] == "message"
    ]
    assert bodies == ["through nginx"]
    # The retry of the same send through nginx: 200, the same message.
    retry = api.send(
        alice,
        cid,
        "through nginx",
        client_msg_id=sent.json()["message"]["client_msg_id"],
    )
    assert retry.status_code == 200
    assert retry.json()["message"]["seq"] == sent.json()["message"]["seq"]


def test_poll_is_held_to_its_full_timeout_through_nginx(proxied: Proxied) -> None:
    api = proxied.api
    user = api.user()
    cursor = api.head(user)
    started = time.monotonic()
    answer = api.poll(user, cursor, timeout=FULL_POLL_SECS)
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["events"] == []
    assert answer.json()["cursor"] == cursor
    assert FULL_POLL_SECS - 0.5 <= elapsed < FULL_POLL_SECS + 3, elapsed


def test_large_json_is_gzipped(proxied: Proxied) -> None:
    api = proxied.api
    alice, bob = api.user(), api.user()
    cid = api.direct(alice, bob)
    for i in range(20):
        assert api.send(alice, cid, f"message {i} " + "lorem ipsum " * 20).ok
    url = f"{api.url}/v1/conversations/{cid}/messages?limit=50"
    r = requests.get(
        url, headers={**alice.headers, "Accept-Encoding": "gzip"}, timeout=10
    )
    assert r.status_code == 200
    assert r.headers["Content-Encoding"] == "gzip"
    assert len(r.json()["messages"]) == 20  # requests inflated it
    assert "Accept-Encoding" in r.headers.get("Vary", "")
    # Small answers are not worth compressing.
    small = requests.get(
        f"{api.url}/healthz", headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert "Content-Encoding" not in small.headers
    # Nor compressed for a client that did not ask.
    plain = requests.get(
        url, headers={**alice.headers, "Accept-Encoding": "identity"}, timeout=10
    )
    assert "Content-Encoding" not in plain.headers
    assert plain.json() == r.json()


def _access_log_line(server: Server, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in server.log_path.read_text(errors="replace").splitlines():
            if request_id in line and line.startswith("{"):
                record = json.loads(line)
                if (
                    record.get("logger") == "messenger.access"
                    and record.get("request_id") == request_id
                ):
                    return record  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no access log line for {request_id}:\n{server.log()}")


def test_app_sees_the_client_address_not_nginx(proxied: Proxied) -> None:
    """The client connects from 127.0.0.2, nginx connects to gunicorn from
    127.0.0.1; with one trusted proxy the app logs 127.0.0.2, and ignores an
    X-Forwarded-For the client made up."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", proxied.nginx.port, timeout=10, source_address=("127.0.0.2", 0)
    )
    try:
        conn.request("GET", "/healthz", headers={"X-Forwarded-For": "203.0.113.9"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 200
    request_id = response.getheader("X-Request-ID")
    assert request_id
    record = _access_log_line(proxied.gunicorn, request_id)
    assert record["ip"] == "127.0.0.2"
    # The same request id in nginx's access log ties both lines together.
    nginx_log = (proxied.nginx.prefix / "access.log").read_text()
    assert f"rid={request_id}" in nginx_log


def test_nginx_own_errors_are_json(proxied: Proxied) -> None:
    api = proxied.api
    user = api.user()
    big = requests.post(
        f"{api.url}/v1/conversations/1/messages",
        headers={**user.headers, "Content-Type": "application/json"},
        data=b'{"body": "' + b"x" * 70_000 + b'"}',
        timeout=10,
    )
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "payload_too_large"


def test_attachments_go_up_streamed_and_down_through_x_accel_redirect(
    proxied: Proxied,
) -> None:
    api = proxied.api
    alice, bob, eve = api.user(), api.user(), api.user()
    cid = api.direct(alice, bob)
    data = secrets.token_bytes(3 * 1024 * 1024)  # far above the 64 KiB JSON limit
    r = requests.post(
        f"{api.url}/v1/attachments?filename=big.bin",
        headers={**alice.headers, "Content-Type": "application/octet-stream"},
        data=data,
        timeout=30,
    )
    assert r.status_code == 201, r.text
    att = r.json()["attachment"]
    assert att["sha256"] == hashlib.sha256(data).hexdigest()
    sent = requests.post(
        f"{api.url}/v1/conversations/{cid}/messages",
        headers=alice.headers,
        json={"client_msg_id": "big", "attachment_ids": [att["id"]]},
        timeout=10,
    )
    assert sent.status_code == 201, sent.text
    url = f"{api.url}/v1/attachments/{att['id']}"
    r = requests.get(url, headers=bob.headers, timeout=30)
    assert r.status_code == 200 and r.content == data
    # nginx sent it: the redirect itself never reaches the client.
    assert "X-Accel-Redirect" not in r.headers
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["ETag"] == f'"{att["sha256"]}"'
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Content-Disposition"].startswith('attachment; filename="big.bin"')
    part = requests.get(
        url, headers={**bob.headers, "Range": "bytes=100-199"}, timeout=10
    )
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    several = requests.get(
        url, headers={**bob.headers, "Range": "bytes=0-1,5-6"}, timeout=30
    )
    assert several.status_code == 200 and several.content == data
    past = requests.get(
        url, headers={**bob.headers, "Range": "bytes=99999999-"}, timeout=10
    )
    assert (
        past.status_code == 416
        and past.json()["error"]["code"] == "range_not_satisfiable"
    )
    same = requests.get(
        url, headers={**bob.headers, "If-None-Match": r.headers["ETag"]}, timeout=10
    )
    assert same.status_code == 304
    # A stranger, and the internal location asked for directly: 404.
    assert requests.get(url, headers=eve.headers, timeout=10).status_code == 404
    direct = requests.get(
        f"{api.url}/_attachments/{att['sha256'][:2]}/{att['sha256'][2:4]}/{att['sha256']}",
        timeout=10,
    )
    assert direct.status_code == 404
    # Past the app's limit (25 MiB by default), nginx's own 413 is JSON too.
    too_big = requests.post(
        f"{api.url}/v1/attachments",
        headers={**alice.headers, "Content-Type": "application/octet-stream"},
        data=b"\0" * (27 * 1024 * 1024),
        timeout=60,
    )
    assert too_big.status_code == 413
    assert too_big.json()["error"]["code"] == "payload_too_large"
