"""Wake lists are bounded; a stopping worker takes itself out of Redis."""

from typing import Any

import redis as redis_lib

from messenger.realtime import keys
from messenger.realtime.hub import Hub
from messenger.realtime.wakeups import Registry, Waker


def test_wake_list_of_a_silent_worker_is_trimmed(
    redis: redis_lib.Redis, monkeypatch: Any
) -> None:
    monkeypatch.setattr(keys, "WAKE_LIST_MAX", 5)
    silent = Registry(redis, "silent-worker", Hub())
    silent.ensure(41)
    waker = Waker(redis, "sender", Hub())
    for _ in range(12):
        waker.wake_users([41])
    assert redis.llen(keys.wake_list("silent-worker")) == 5


def test_deregister_removes_worker_from_users_and_drops_its_wake_list(
    redis: redis_lib.Redis,
) -> None:
    leaving = Registry(redis, "leaving-worker", Hub())
    staying = Registry(redis, "staying-worker", Hub())
    for user_id in (51, 52):
        leaving.ensure(user_id)
    staying.ensure(51)
    Waker(redis, "sender", Hub()).wake_users([51])
    assert redis.llen(keys.wake_list("leaving-worker")) == 1

    leaving.deregister()

    assert redis.zrange(keys.connections(51), 0, -1) == [b"staying-worker"]
    assert redis.zrange(keys.connections(52), 0, -1) == []
    assert not redis.exists(keys.wake_list("leaving-worker"))
    Waker(redis, "sender", Hub()).wake_users([51, 52])
    assert not redis.exists(keys.wake_list("leaving-worker"))


def test_one_sweeper_holds_a_database_lease_until_it_lapses(
    redis: redis_lib.Redis,
) -> None:
    from messenger.workers.sweeper import hold_lease

    key = keys.sweep_lease("db1:5432/m")
    assert hold_lease(redis, key, "worker-a", 5)
    assert not hold_lease(redis, key, "worker-b", 5)
    assert hold_lease(redis, key, "worker-a", 5)  # renewed by its holder
    redis.delete(key)  # as if it had lapsed
    assert hold_lease(redis, key, "worker-b", 5)
    assert not hold_lease(redis, key, "worker-a", 5)
