"""The delivery fast path on real servers: polls answered from what the wakes
carried, on several workers of two gunicorn servers, one of them restarted in
the middle, never skip or repeat an event."""

import itertools
import random
import time
from pathlib import Path
from typing import Any

import gevent
import requests

from tests.system.conftest import Api, Server, start_gunicorn

MESSAGES = 40
DEVICES = 3
POLL_TIMEOUT_SECS = 2
DEADLINE_SECS = 60


def test_devices_moving_between_workers_and_a_restart_see_each_message_once(
    api: Api, server: Server, services: Any, tmp_path: Path
) -> None:
    other = start_gunicorn(services, tmp_path)
    servers = [server, other]
    try:
        alice, bob = api.user(), api.user()
        cid = api.direct(alice, bob)
        start = api.head(bob)
        deadline = time.monotonic() + DEADLINE_SECS
        sent: list[int] = []
        seen: dict[int, list[int]] = {k: [] for k in range(DEVICES)}
        is_sending = [True]

        def device(k: int) -> None:
            """Polls with its cursor until it has every message sent: devices 0
            and 1 on one kept-alive connection (one worker, the fast path's
            case), device 2 on the next server each time (worker to worker)."""
            cursor = start
            session = requests.Session()
            for turn in itertools.count(k):
                assert time.monotonic() < deadline, f"device {k} saw {seen[k]}"
                url = servers[turn % len(servers) if k == 2 else k].url
                try:
                    r = session.get(
                        f"{url}/v1/events?after={cursor}&timeout={POLL_TIMEOUT_SECS}",
                        headers=bob.headers,
                        timeout=POLL_TIMEOUT_SECS + 10,
                    )
                except requests.RequestException:
                    session.close()  # that server is restarting
                    session = requests.Session()
                    gevent.sleep(0.05)
                    continue
                if r.status_code != 200:
                    gevent.sleep(0.05)
                    continue
                page = r.json()
                seen[k].extend(
                    e["message"]["seq"]
                    for e in page["events"]
                    if e["type"] == "message"
                )
                cursor = page["cursor"]
                if not is_sending[0] and len(seen[k]) >= len(sent) and not page["more"]:
                    session.close()
                    return

        devices = [gevent.spawn(device, k) for k in range(DEVICES)]
        rng = random.Random(13)
        for n in range(MESSAGES):
            if n == MESSAGES // 2:
                # A restart: its held polls are answered, its memory is gone.
                servers[0].stop()
                servers[0] = start_gunicorn(services, tmp_path)
            sender = Api(servers[n % 2].url)
            response = sender.send(alice, cid, f"m{n}")
            assert response.status_code == 201, response.text
            sent.append(response.json()["message"]["seq"])
            gevent.sleep(rng.choice([0, 0, 0.01, 0.05, 0.2]))
        is_sending[0] = False
        gevent.joinall(devices, timeout=DEADLINE_SECS, raise_error=True)

        assert sent == list(range(1, MESSAGES + 1))
        for k in range(DEVICES):
            assert seen[k] == sent, f"device {k}"
    finally:
        for srv in servers:
            srv.stop()
