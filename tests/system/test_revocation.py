"""Revocation reaches every worker within a second: two gunicorn servers on the
same databases and Redis, a token cached by one, revoked through the other."""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Services, unique_handle
from tests.system.conftest import Server, start_gunicorn

# API.md: revoked "at once"; the issue asks for every worker within a second.
REVOCATION_MAX_SECS = 1.0


@pytest.fixture
def two_servers(
    services: Services, settings: Any, tmp_path: Path
) -> Iterator[tuple[Server, Server]]:
    first = start_gunicorn(services, tmp_path, workers=1)
    try:
        second = start_gunicorn(services, tmp_path, workers=1)
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def login(url: str, handle: str, password: str) -> str:
    r = requests.post(
        url + "/v1/sessions", json={"handle": handle, "password": password}, timeout=10
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def me(url: str, token: str, session: requests.Session) -> int:
    r = session.get(
        url + "/v1/users/me", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    return r.status_code


def refused_after(url: str, token: str, session: requests.Session) -> float:
    """Seconds until the server refuses the token (bounded)."""
    started = time.monotonic()
    while me(url, token, session) != 401:
        waited = time.monotonic() - started
        assert waited < 5, "the token was never refused"
        time.sleep(0.005)
    return time.monotonic() - started


def test_revocations_reach_the_other_server_within_a_second(
    two_servers: tuple[Server, Server],
) -> None:
    a, b = two_servers
    handle, password = unique_handle("rv"), "password123"
    r = requests.post(
        a.url + "/v1/users", json={"handle": handle, "password": password}, timeout=10
    )
    assert r.status_code == 201
    auth = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    measured: dict[str, float] = {}
    with requests.Session() as on_b:
        # Logout through A of a token B has cached.
        token = login(a.url, handle, password)
        assert [me(b.url, token, on_b) for _ in range(3)] == [200, 200, 200]
        r = requests.delete(
            a.url + "/v1/sessions/current", headers=auth(token), timeout=5
        )
        assert r.status_code == 204
        measured["logout"] = refused_after(b.url, token, on_b)

        # Revoking one session by id.
        keep, other = login(a.url, handle, password), login(a.url, handle, password)
        assert me(b.url, other, on_b) == 200
        listed = requests.get(a.url + "/v1/sessions", headers=auth(other), timeout=5)
        other_id = next(s["id"] for s in listed.json()["sessions"] if s["current"])
        r = requests.delete(
            f"{a.url}/v1/sessions/{other_id}", headers=auth(keep), timeout=5
        )
        assert r.status_code == 204
        measured["revoke_one"] = refused_after(b.url, other, on_b)

        # Revoking all others, and a password change.
        others = [login(a.url, handle, password) for _ in range(2)]
        assert [me(b.url, t, on_b) for t in others] == [200, 200]
        r = requests.delete(a.url + "/v1/sessions", headers=auth(keep), timeout=5)
        assert r.status_code == 204
        measured["revoke_others"] = max(refused_after(b.url, t, on_b) for t in others)

        victim = login(a.url, handle, password)
        assert me(b.url, victim, on_b) == 200
        r = requests.put(
            a.url + "/v1/users/me/password",
            headers=auth(keep),
            json={"current_password": password, "new_password": "another password"},
            timeout=10,
        )
        assert r.status_code == 204
        measured["password_change"] = refused_after(b.url, victim, on_b)
        assert me(b.url, keep, on_b) == 200
    print("revocation latency across servers (s):", measured)
    assert max(measured.values()) < REVOCATION_MAX_SECS, measured
