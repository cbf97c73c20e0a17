"""Redis URLs: one server, a Redis Cluster, a Sentinel-watched primary."""

import pytest

from messenger.realtime.redis_urls import CLUSTER, PLAIN, SENTINEL, parse_redis_url
from messenger.settings import ConfigError, load


def test_plain_url_is_one_server() -> None:
    target = parse_redis_url("redis://127.0.0.1:6379/2")
    assert target.kind == PLAIN


def test_cluster_url_names_every_seed_node() -> None:
    target = parse_redis_url("redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001")
    assert target.kind == CLUSTER
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert target.password == "s3cret"


def test_sentinel_url_names_service_and_database() -> None:
    target = parse_redis_url("redis+sentinel://a:26379,b:26380/mymaster/3")
    assert target.kind == SENTINEL
    assert target.nodes == (("a", 26379), ("b", 26380))
    assert (target.service, target.db) == ("mymaster", 3)


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://a:7000/1",  # a cluster has database 0 only
        "redis+cluster://a",  # no port
        "redis+sentinel://a:26379",  # no service
        "redis+sentinel://a:26379/m/x",  # database not a number
        "redis+cluster://",  # no node
    ],
)
def test_malformed_url_stops_start_up_with_one_sentence(url: str) -> None:
    with pytest.raises(ConfigError, match="MESSENGER_REDIS_URL"):
        load({"MESSENGER_REDIS_URL": url})


def test_cluster_url_is_accepted_by_the_settings() -> None:
    settings = load({"MESSENGER_REDIS_URL": "redis+cluster://127.0.0.1:7000"})
    assert settings.redis_url == "redis+cluster://127.0.0.1:7000"


def test_cluster_client_starts_while_cluster_is_away_and_fails_as_redis_errors() -> (
    None
):
    import redis

    from messenger.embedded import free_port
    from messenger.realtime.connections import disconnect, shared_client
    from messenger.realtime.hub import Hub
    from messenger.realtime.presence import PresenceBoard
    from messenger.realtime.wakeups import Registry, Waker

    client = shared_client(f"redis+cluster://127.0.0.1:{free_port()}", 4)
    try:
        board = PresenceBoard(client)  # nothing asked of Redis yet
        script = client.register_script("return 1")
        with pytest.raises(redis.RedisError):
            client.ping()
        with pytest.raises(redis.RedisError):
            board.last_seen([1, 2])
        with pytest.raises(redis.RedisError):
            script(keys=["k"])
        # The paths that degrade catch RedisError: a wake is logged, not raised.
        Waker(client, "w", Hub()).wake_users([1])
        assert not Registry(client, "w", Hub()).ensure(1)
    finally:
        disconnect(client)
