"""The cluster watch degrades the hub while a master is away and recovers it.

A single Redis server stands in for a cluster of one here: the watch reads its
masters from CLUSTER SLOTS, which a server not in cluster mode refuses, so these
tests use the watch's own seeds directly (the topology tests run the real
cluster)."""

from typing import Any

import redis as redis_lib

from messenger.embedded import free_port
from messenger.realtime.cluster_watch import ClusterWatch
from messenger.realtime.hub import Hub
from messenger.realtime.wakeups import Registry


def test_no_node_answering_degrades_the_hub_once(redis: redis_lib.Redis) -> None:
    hub = Hub()
    watch = ClusterWatch([("127.0.0.1", free_port())], hub, Registry(redis, "w", hub))
    try:
        assert not watch.check_once()
        assert watch.degraded and not hub.redis_ok
        hub.redis_ok = True  # the dispatcher's own node answered again
        assert not watch.check_once()
        assert not hub.redis_ok  # still degraded: a master is away
    finally:
        watch.stop()


def test_masters_answering_again_restore_wakes_and_registrations(
    redis: redis_lib.Redis, monkeypatch: Any
) -> None:
    hub = Hub()
    registry = Registry(redis, "w", hub)
    kwargs = redis.connection_pool.connection_kwargs
    address = ("127.0.0.1", kwargs["port"])
    watch = ClusterWatch([address], hub, registry, password=kwargs.get("password"))
    try:
        monkeypatch.setattr(watch, "_masters", lambda: None)
        assert not watch.check_once() and not hub.redis_ok
        monkeypatch.setattr(watch, "_masters", lambda: {address})
        assert watch.check_once()
        assert hub.redis_ok and not watch.degraded
    finally:
        watch.stop()
