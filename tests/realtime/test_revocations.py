"""The revocation listener: real Redis pub/sub, reconnects, and the promise the
caches rely on: `listening` only while nothing published can be missed."""

import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import redis as redis_lib

from messenger.embedded import free_port
from messenger.realtime import keys, revocations
from messenger.realtime.revocations import RevocationListener


class Recorder:
    def __init__(self) -> None:
        self.tokens: list[bytes] = []
        self.blocked: list[int] = []
        self.resets = 0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.01)


@pytest.fixture
def listen(
    services: Any,
) -> Iterator[Callable[[str], tuple[RevocationListener, Recorder]]]:
    started: list[RevocationListener] = []

    def make(url: str) -> tuple[RevocationListener, Recorder]:
        seen = Recorder()

        def reset() -> None:
            seen.resets += 1

        listener = RevocationListener(
            url, seen.tokens.extend, seen.blocked.extend, reset
        )
        listener.start()
        started.append(listener)
        return listener, seen

    yield make
    for listener in started:
        listener.stop()


def test_published_revocations_arrive(listen: Any, services: Any) -> None:
    listener, seen = listen(services.redis.url)
    wait_for(lambda: listener.listening, "subscription")
    assert seen.resets == 1  # a fresh subscription starts from an empty cache
    client = redis_lib.Redis.from_url(services.redis.url)
    try:
        revocations.publish(client, digests=[b"\x01" * 32], blocked_user_ids=[42])
        client.publish(keys.SESSIONS_REVOKED_CHANNEL, b"not json")  # dropped
        revocations.publish(client, digests=[b"\x02" * 32])
    finally:
        client.close()
    wait_for(lambda: len(seen.tokens) == 2, "both messages")
    assert seen.tokens == [b"\x01" * 32, b"\x02" * 32]
    assert seen.blocked == [42]
    assert listener.listening


def test_a_cut_subscription_resets_the_cache_and_comes_back(
    listen: Any, services: Any
) -> None:
    listener, seen = listen(services.redis.url)
    wait_for(lambda: listener.listening, "subscription")
    client = redis_lib.Redis.from_url(services.redis.url)
    try:
        killed = client.client_kill_filter(_type="pubsub")
        assert killed >= 1
        wait_for(lambda: seen.resets >= 2, "a reset after the cut")
        wait_for(lambda: listener.listening, "a new subscription")
        revocations.publish(client, digests=[b"\x03" * 32])
        wait_for(lambda: seen.tokens == [b"\x03" * 32], "delivery after the cut")
    finally:
        client.close()


def test_without_redis_it_never_claims_to_listen(listen: Any) -> None:
    listener, seen = listen(f"redis://127.0.0.1:{free_port()}/0")
    gevent.sleep(0.5)
    assert not listener.listening
    assert seen.resets >= 1
