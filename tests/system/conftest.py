"""gunicorn-backed fixtures: the production server with real gevent workers."""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from messenger.cli import gunicorn_argv
from messenger.embedded import free_port
from tests.conftest import TEST_SHARDS, Services, unique_handle

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    process: subprocess.Popen  # type: ignore[type-arg]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_gunicorn(
    services: Services, root: Path, workers: int = 2, **extra_env: str
) -> Server:
    port = free_port()
    env = dict(os.environ)
    env.update(
        services.env(
            MESSENGER_PORT=str(port), MESSENGER_WORKERS=str(workers), **extra_env
        )
    )
    log_path = root / f"gunicorn-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            gunicorn_argv(),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{server.log()}")
        try:
            if requests.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"gunicorn did not start:\n{server.log()}")


@pytest.fixture
def server(services: Services, settings: Any, tmp_path: Path) -> Iterator[Server]:
    srv = start_gunicorn(services, tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


@dataclass
class HttpUser:
    id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    """A tiny client of the running server (new connection per call)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def user(self) -> HttpUser:
        handle = unique_handle("sys")
        body = {"handle": handle, "password": "password123"}
        r = requests.post(self.url + "/v1/users", json=body, timeout=10)
        assert r.status_code == 201, r.text
        r = requests.post(self.url + "/v1/sessions", json=body, timeout=10)
        assert r.status_code == 201, r.text
        return HttpUser(r.json()["user"]["id"], r.json()["token"])

    def direct(self, a: HttpUser, b: HttpUser) -> int:
        r = requests.post(
            self.url + "/v1/conversations",
            headers=a.headers,
            json={"kind": "direct", "user_id": b.id},
            timeout=10,
        )
        assert r.status_code in (200, 201), r.text
        return int(r.json()["conversation"]["id"])

    def send(
        self,
        user: HttpUser,
        conversation_id: int,
        body: str,
        client_msg_id: str | None = None,
    ) -> requests.Response:
        return requests.post(
            f"{self.url}/v1/conversations/{conversation_id}/messages",
            headers=user.headers,
            timeout=10,
            json={"client_msg_id": client_msg_id or os.urandom(6).hex(), "body": body},
        )

    def head(self, user: HttpUser) -> str:
        r = requests.get(self.url + "/v1/events", headers=user.headers, timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["cursor"])

    def poll(
        self,
        user: HttpUser,
        cursor: str,
        timeout: float = 0,
        session: requests.Session | None = None,
    ) -> requests.Response:
        getter = session.get if session else requests.get
        return getter(
            f"{self.url}/v1/events?after={cursor}&timeout={timeout}",
            headers=user.headers,
            timeout=timeout + 10,
        )


@pytest.fixture
def api(server: Server) -> Api:
    return Api(server.url)


def user_on(api: Api, shards: range) -> HttpUser:
    for _ in range(40):
        user = api.user()
        if user.id % TEST_SHARDS in shards:
            return user
    raise AssertionError(f"no user id landed on shards {shards}")


def group_on(api: Api, owner: HttpUser, members: list[HttpUser], shards: range) -> int:
    """A group whose id lands on `shards`. Ids come from one sequence, so groups
    of a throwaway user step it until the next id fits (the owner's conversation
    list must not gain groups on the other server)."""
    stepper = api.user()
    for _ in range(40):
        r = requests.post(
            api.url + "/v1/conversations",
            headers=stepper.headers,
            json={"kind": "group", "title": "step"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        if (r.json()["conversation"]["id"] + 1) % TEST_SHARDS in shards:
            break
    r = requests.post(
        api.url + "/v1/conversations",
        headers=owner.headers,
        json={
            "kind": "group",
            "title": "outage",
            "member_ids": [m.id for m in members],
        },
        timeout=10,
    )
    assert r.status_code == 201, r.text
    conversation_id = int(r.json()["conversation"]["id"])
    assert conversation_id % TEST_SHARDS in shards, "another test took an id"
    return conversation_id
