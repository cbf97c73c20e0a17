"""/v1/devices: register, list, delete push targets; refused URLs."""

import socket
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from messenger.realtime import keys
from messenger.services.devices import MAX_DEVICES_PER_USER
from messenger.services.push_providers import RESOLVE_TIMEOUT_SECS

HOOK = "http://127.0.0.1:9/hook"


def register(client: Any, user: Any, url: str = HOOK, kind: str = "webhook") -> Any:
    return client.post(
        "/v1/devices", headers=user.headers, json={"kind": kind, "url": url}
    )


def test_register_list_delete(client: Any, make_user: Any, redis: Any) -> None:
    user = make_user()
    r = register(client, user)
    assert r.status_code == 201
    device = r.get_json()["device"]
    assert set(device) == {"id", "kind", "url", "created_at", "secret"}
    assert device["kind"] == "webhook" and device["url"] == HOOK
    assert device["created_at"].endswith("Z")
    assert isinstance(device["id"], int) and len(device["secret"]) >= 32
    assert redis.exists(keys.push_devices_flag(user.id))

    listed = client.get("/v1/devices", headers=user.headers)
    assert listed.status_code == 200
    shown = {k: v for k, v in device.items() if k != "secret"}
    assert listed.get_json() == {"devices": [shown]}

    gone = client.delete(f"/v1/devices/{device['id']}", headers=user.headers)
    assert gone.status_code == 204 and gone.data == b""
    assert client.get("/v1/devices", headers=user.headers).get_json() == {"devices": []}
    assert not redis.exists(keys.push_devices_flag(user.id))
    again = client.delete(f"/v1/devices/{device['id']}", headers=user.headers)
    assert again.status_code == 404
    assert again.get_json()["error"]["code"] == "not_found"


def test_another_users_device_is_not_found(client: Any, make_user: Any) -> None:
    owner, other = make_user(), make_user()
    device_id = register(client, owner).get_json()["device"]["id"]
    r = client.delete(f"/v1/devices/{device_id}", headers=other.headers)
    assert r.status_code == 404
    assert client.get("/v1/devices", headers=other.headers).get_json() == {
        "devices": []
    }
    listed = client.get("/v1/devices", headers=owner.headers).get_json()["devices"]
    assert [d["id"] for d in listed] == [device_id]
    for unknown in (99_999_999_999, 2**63):
        r = client.delete(f"/v1/devices/{unknown}", headers=owner.headers)
        assert r.status_code == 404


def test_registering_the_same_url_again_rotates_the_secret(
    client: Any, make_user: Any
) -> None:
    user = make_user()
    first = register(client, user).get_json()["device"]
    second = register(client, user).get_json()["device"]
    assert second["id"] == first["id"] and second["secret"] != first["secret"]
    devices = client.get("/v1/devices", headers=user.headers).get_json()["devices"]
    assert len(devices) == 1


def test_devices_need_a_token(client: Any) -> None:
    assert client.get("/v1/devices").status_code == 401
    r = client.post("/v1/devices", json={"kind": "webhook", "url": HOOK})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert client.delete("/v1/devices/1").status_code == 401


@pytest.mark.parametrize(
    "body, field",
    [
        ({"kind": "webhook", "url": "ftp://example.com/x"}, "url"),
        ({"kind": "webhook", "url": "javascript:alert(1)"}, "url"),
        ({"kind": "webhook", "url": "example.com/hook"}, "url"),
        ({"kind": "webhook", "url": "http:///nohost"}, "url"),
        ({"kind": "webhook", "url": "http://user:pw@example.com/"}, "url"),
        ({"kind": "webhook", "url": "http://example.com:99999/"}, "url"),
        ({"kind": "webhook", "url": "http://exa mple.com/"}, "url"),
        ({"kind": "webhook", "url": "http://bücher.example/"}, "url"),
        ({"kind": "webhook", "url": "http://example.com/é"}, "url"),
        ({"kind": "webhook", "url": "http://e.com/" + "a" * 2048}, "url"),
        ({"kind": "webhook", "url": ""}, "url"),
        ({"kind": "webhook"}, "url"),
        ({"kind": "carrier-pigeon", "url": HOOK}, "kind"),
        ({"url": HOOK}, "kind"),
        ({"kind": "webhook", "url": HOOK, "extra": 1}, "extra"),
        ({"kind": "webhook", "url": 5}, "url"),
    ],
)
def test_invalid_devices_are_refused(
    client: Any, make_user: Any, body: dict[str, Any], field: str
) -> None:
    r = client.post("/v1/devices", headers=make_user().headers, json=body)
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "validation_failed" and field in error["fields"]


def test_device_routes_need_json(client: Any, make_user: Any) -> None:
    user = make_user()
    r = client.post("/v1/devices", headers=user.headers, data="kind=webhook")
    assert r.status_code == 400


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://127.8.9.10:8080/hook",
        "http://localhost:9000/hook",
        "https://api.localhost/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.1/hook",
        "http://192.168.1.20/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
    ],
)
def test_private_addresses_are_refused(
    client: Any, make_user: Any, override_settings: Any, url: str
) -> None:
    override_settings(push_allow_private=False)
    r = register(client, make_user(), url)
    assert r.status_code == 422, r.get_json()
    reason = r.get_json()["error"]["fields"]["url"][0]
    # Loopback on port 80 is also where the test client reaches the messenger.
    assert "private" in reason or "this messenger" in reason


def test_public_addresses_are_accepted(
    client: Any, make_user: Any, override_settings: Any
) -> None:
    override_settings(push_allow_private=False)
    for url in ("https://93.184.216.34/push?token=abc", "http://[2606:4700::1]:8443/"):
        r = register(client, make_user(), url)
        assert r.status_code == 201, r.get_json()
        assert r.get_json()["device"]["url"] == url


def test_urls_pointing_at_the_messenger_are_refused(
    client: Any, make_user: Any, override_settings: Any
) -> None:
    # Even where private targets are allowed (tests, single-host setups).
    override_settings(host="0.0.0.0", port=8123)
    user = make_user()
    for url in (
        "http://localhost/v1/devices",  # the Host this request came in by
        "http://127.0.0.1:8123/v1/events",  # the address the server binds
        "http://[::1]:8123/",
    ):
        r = register(client, user, url)
        assert r.status_code == 422, url
        assert "this messenger" in r.get_json()["error"]["fields"]["url"][0]
    assert register(client, user, "http://127.0.0.1:8124/hook").status_code == 201
    # Behind a proxy that terminates TLS, the Host header names the public site.
    r = client.post(
        "/v1/devices",
        headers={**user.headers, "Host": "chat.example.com"},
        json={"kind": "webhook", "url": "https://chat.example.com/v1/events"},
    )
    assert r.status_code == 422
    assert "this messenger" in r.get_json()["error"]["fields"]["url"][0]


def test_at_most_max_devices_per_user(client: Any, make_user: Any) -> None:
    user = make_user()
    for n in range(MAX_DEVICES_PER_USER):
        assert register(client, user, f"{HOOK}/{n}").status_code == 201
    r = register(client, user, f"{HOOK}/one-too-many")
    assert r.status_code == 422 and "url" in r.get_json()["error"]["fields"]
    # Registering a known URL again is not a new device.
    assert register(client, user, f"{HOOK}/0").status_code == 201
    listed = client.get("/v1/devices", headers=user.headers).get_json()["devices"]
    assert len(listed) == MAX_DEVICES_PER_USER


def test_concurrent_registrations_never_exceed_the_cap(
    client: Any, make_user: Any
) -> None:
    # Each registration counted its own insert only: concurrent ones all fit.
    user = make_user()
    for n in range(MAX_DEVICES_PER_USER - 2):
        assert register(client, user, f"{HOOK}/{n}").status_code == 201
    jobs = [gevent.spawn(register, client, user, f"{HOOK}/race-{n}") for n in range(12)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    statuses = sorted(j.value.status_code for j in jobs)
    assert statuses == [201] * 2 + [422] * 10, statuses
    listed = client.get("/v1/devices", headers=user.headers).get_json()["devices"]
    assert len(listed) == MAX_DEVICES_PER_USER


@pytest.fixture
def silent_dns() -> Iterator[tuple[str, socket.socket]]:
    """A DNS server on 127.0.0.1 that reads every query and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}", sock
    finally:
        sock.close()


def test_a_dns_server_that_never_answers_stalls_no_login(
    client: Any, make_user: Any, override_settings: Any, silent_dns: Any
) -> None:
    # Lookups ran in gevent's thread pool, which also hashes passwords: slow DNS
    # at device registration held logins back.
    server, sock = silent_dns
    override_settings(push_allow_private=False, push_dns_server=server)
    users = [make_user() for _ in range(3)]
    started = time.monotonic()
    jobs = [
        gevent.spawn(register, client, users[n % 3], f"https://n{n}.example.test/hook")
        for n in range(30)
    ]
    gevent.sleep(0.2)  # every lookup is now waiting for its answer
    login_started = time.monotonic()
    for user in users:
        r = client.post(
            "/v1/sessions", json={"handle": user.handle, "password": user.password}
        )
        assert r.status_code == 201, r.get_json()
    login_secs = time.monotonic() - login_started
    gevent.joinall(jobs, timeout=30, raise_error=True)
    took = time.monotonic() - started
    # Unknown today is accepted (every delivery checks again), within the bound.
    assert {j.value.status_code for j in jobs} == {201}
    assert took < RESOLVE_TIMEOUT_SECS + 2, took
    assert login_secs < 1.0, login_secs
    # The lookups went to the configured server, not to the system's.
    sock.settimeout(1)
    query, _ = sock.recvfrom(512)
    assert b"example" in query
