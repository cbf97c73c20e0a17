"""A shard moves while gunicorn's workers (other processes) serve it: each
worker follows the new map by itself, and nothing acknowledged is lost."""

import os
import time
from collections import Counter
from typing import Any

import gevent
import pytest
import requests

from messenger.settings import Settings
from messenger.storage import moves, placement, shardmap
from messenger.storage.router import Router
from tests.conftest import TEST_SHARDS
from tests.system.conftest import Api, HttpUser, Server

SHARD = 5


def user_on(api: Api, shard: int) -> HttpUser:
    for _ in range(TEST_SHARDS * 6):
        user = api.user()
        if user.id % TEST_SHARDS == shard:
            return user
    raise AssertionError(f"no user landed on shard {shard}")


@pytest.fixture
def mover(settings: Settings) -> Any:
    router = Router.from_settings(settings)
    yield router
    move = moves.current_move(router)
    if move is not None:
        moves.abort_move(router, move.shard)
    router.close()


def test_gunicorn_workers_follow_a_move_and_lose_nothing(
    server: Server, api: Api, mover: Router
) -> None:
    moving, other = user_on(api, SHARD), user_on(api, 1)
    conversation_id = api.direct(other, moving)
    acked: list[int] = []
    refused = 0
    running = True

    def sender() -> None:
        nonlocal refused
        for n in range(10_000):
            if not running:
                return
            client_msg_id = os.urandom(6).hex()
            for _ in range(200):
                r = api.send(other, conversation_id, f"m{n}", client_msg_id)
                if r.status_code != 503:
                    break
                assert r.headers["Retry-After"] == "1", r.text
                refused += 1
                gevent.sleep(0.05)
            assert r.status_code == 201, r.text
            acked.append(r.json()["message"]["seq"])
            gevent.sleep(0.02)

    load = gevent.spawn(sender)
    try:
        gevent.sleep(1)
        result = moves.move_shard(mover, SHARD, "m3")
        # Every gunicorn worker confirmed the freeze and the switch itself.
        with mover.directory("test_followers", transaction=False) as cur:
            assert (
                shardmap.lagging_followers(cur, placement.stored_map(mover).epoch) == []
            )
            cur.execute(
                "SELECT count(*) FROM directory.shard_map_followers "
                "WHERE seen_at > now() - interval '10 seconds'"
            )
            assert cur.fetchone()[0] >= 2
        gevent.sleep(1)
    finally:
        running = False
        load.join(timeout=30)
    assert load.successful(), load.exception
    print(
        f"\nfence {result.fence_secs:.2f} s, then verify {result.verify_secs:.2f} s;"
        f" {len(acked)} acked, {refused} 503s"
    )
    assert result.fence_secs < 5
    events: list[dict[str, Any]] = []
    cursor = "0"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = requests.get(
            f"{api.url}/v1/events?after={cursor}&limit=200",
            headers=moving.headers,
            timeout=10,
        )
        assert r.status_code == 200, r.text
        events += r.json()["events"]
        cursor = r.json()["cursor"]
        seen = Counter(e["message"]["seq"] for e in events if e["type"] == "message")
        if not r.json()["more"] and set(acked) <= set(seen):
            break
        gevent.sleep(0.2)
    assert sorted(seen) == list(range(1, len(seen) + 1))
    assert all(n == 1 for n in seen.values())
    assert set(acked) <= set(seen)
    moves.drop_moved_shards(mover, SHARD)
    moves.move_shard(mover, SHARD, "m2")
    moves.drop_moved_shards(mover, SHARD)
