"""The realtime layer on its own: the hub (fake clock), the registry and the
waker (fake clock, real Redis), and the dispatcher (real Redis)."""

import secrets
import socket
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
import redis as redis_lib

from messenger.embedded import free_port
from messenger.realtime import hub as hub_module
from messenger.realtime import keys
from messenger.realtime.dispatcher import Dispatcher
from messenger.realtime.hub import (
    CLIENT_GONE,
    KNOWN_GRACE_SECS,
    SHUTDOWN,
    SUPERSEDED,
    Delivery,
    Hub,
)
from messenger.realtime.wakeups import (
    Registry,
    Waker,
    decode_delivery,
    decode_wake,
    encode_delivery,
    encode_wake,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, secs: float) -> None:
        self.now += secs


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hub(clock: FakeClock) -> Hub:
    return Hub(max_polls_per_user=2, clock=clock)


# ---- the hub ------------------------------------------------------------------------


def test_listen_joins_runs_the_hooks_and_leaves_on_every_exit(hub: Hub) -> None:
    calls: list[tuple[str, int]] = []
    hub.on_poll_start.append(lambda u: calls.append(("start", u)))
    hub.on_poll_end.append(lambda u: calls.append(("end", u)))
    with hub.listen(7):
        assert hub.is_holding(7) and len(hub) == 1
        assert calls == [("start", 7)]
    assert not hub.is_holding(7) and len(hub) == 0
    assert calls == [("start", 7), ("end", 7)]
    with pytest.raises(ZeroDivisionError), hub.listen(7):
        _ = 1 / 0
    assert not hub.is_holding(7)
    assert calls[-1] == ("end", 7)


def test_a_failing_hook_never_breaks_the_poll(hub: Hub) -> None:
    def broken(user_id: int) -> None:
        raise RuntimeError("presence down")

    hub.on_poll_start.append(broken)
    hub.on_poll_end.append(broken)
    with hub.listen(7):
        assert hub.is_holding(7)
    assert not hub.is_holding(7)


def test_listen_registers_only_polls_that_may_be_held(hub: Hub) -> None:
    registered: list[int] = []
    hub.register = lambda u: registered.append(u) is None
    with hub.listen(1, hold=False):
        pass
    with hub.listen(2):
        pass
    assert registered == [2]


def test_a_wake_during_the_read_is_not_lost(hub: Hub) -> None:
    with hub.listen(7) as waiter:
        waiter.rearm()
        assert hub.wake(7) == 1  # arrives while the poll reads the database
        assert waiter.wait(0)
        waiter.rearm()
        assert not waiter.wait(0)


def test_ephemeral_events_are_handed_over_once(hub: Hub) -> None:
    with hub.listen(7) as waiter:
        hub.wake(7, {"type": "typing"})
        hub.wake(7, {"type": "presence"})
        assert waiter.take_ephemeral() == [{"type": "typing"}, {"type": "presence"}]
        assert waiter.take_ephemeral() == []


def test_too_many_polls_release_the_oldest(hub: Hub) -> None:
    with hub.listen(7) as first, hub.listen(7) as second, hub.listen(7) as third:
        assert first.released == SUPERSEDED
        assert second.released is None and third.released is None
        assert hub.polls_of(7) == 2


def test_drain_answers_held_polls_and_refuses_new_ones(hub: Hub) -> None:
    with hub.listen(7) as waiter:
        hub.drain()
        assert waiter.released == SHUTDOWN and waiter.wait(0)
        assert len(hub) == 0
        with hub.listen(8) as late:
            assert late.released == SHUTDOWN
            assert not hub.is_holding(8)


def test_linger_ends_with_the_fake_clock_or_a_stored_wake(
    hub: Hub, clock: FakeClock
) -> None:
    with hub.listen(7) as waiter:
        # A stored wake ends the gathering of ephemeral events at once.
        hub.wake(7)
        with gevent.Timeout(5):
            waiter.linger(30)
        # With the clock past the end, lingering returns without waiting.
        waiter.rearm()
        gevent.spawn_later(0.01, clock.advance, 60)
        gevent.spawn_later(0.02, hub.wake, 7, {"type": "typing"})
        with gevent.Timeout(5):
            waiter.linger(30)
        assert waiter.take_ephemeral() == [{"type": "typing"}]


def test_an_unregistered_poll_re_reads_on_a_short_interval(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "DEGRADED_RECHECK_SECS", 0.01)
    hub.register = lambda user_id: False  # Redis did not answer
    with hub.listen(7) as waiter, gevent.Timeout(5):
        assert not waiter.wait(30)
    hub.register = lambda user_id: True
    hub.redis_ok = False  # the dispatcher lost Redis
    with hub.listen(7) as waiter, gevent.Timeout(5):
        assert not waiter.wait(30)


def test_degraded_re_reads_back_off_with_jitter(hub: Hub) -> None:
    # A re-read every second from every held poll, all in step, while Redis was
    # down: 10,000 polls made 10,000 queries a second per worker.
    hub.redis_ok = False
    waits: list[list[float]] = []
    for _ in range(20):
        with hub.listen(7) as waiter:
            waits.append([waiter.recheck_secs() for _ in range(6)])
    for seq in waits:
        assert hub_module.DEGRADED_RECHECK_SECS / 2 <= seq[0] <= 1.0
        assert seq[-1] > 2 * hub_module.DEGRADED_RECHECK_SECS
        assert max(seq) <= hub_module.DEGRADED_RECHECK_MAX_SECS
        assert sum(seq) > 10  # six re-reads span well over six seconds
    assert len({round(seq[2], 6) for seq in waits}) > 10  # polls spread out


def test_closing_the_client_socket_releases_the_poll(hub: Hub) -> None:
    server_side, client_side = socket.socketpair()
    try:
        with hub.listen(7, server_side) as waiter:
            gevent.spawn_later(0.01, client_side.close)
            with gevent.Timeout(5):
                assert waiter.wait(30)
            assert waiter.released == CLIENT_GONE
        assert not hub.is_holding(7)
    finally:
        server_side.close()
        client_side.close()


def test_a_pipelined_request_is_not_a_hang_up(hub: Hub) -> None:
    server_side, client_side = socket.socketpair()
    try:
        with hub.listen(7, server_side) as waiter:
            client_side.sendall(b"GET /next HTTP/1.1\r\n")
            assert not waiter.wait(0.05)
            assert waiter.released is None
    finally:
        server_side.close()
        client_side.close()


# ---- registry and waker -------------------------------------------------------------


@pytest.fixture
def worker_ids() -> tuple[str, str]:
    return f"test-a-{secrets.token_hex(4)}", f"test-b-{secrets.token_hex(4)}"


def _user() -> int:
    return 10_000_000 + secrets.randbelow(10_000_000)


def test_registry_writes_once_per_half_ttl(
    redis: redis_lib.Redis, clock: FakeClock, worker_ids: tuple[str, str]
) -> None:
    user_id = _user()
    worker = worker_ids[0]
    registry = Registry(redis, worker, Hub(), clock=clock)
    key = keys.connections(user_id)
    assert registry.ensure(user_id)
    assert redis.zscore(key, worker) == clock.now + keys.CONN_TTL_SECS
    redis.delete(key)
    clock.advance(keys.CONN_TTL_SECS / 2 - 1)
    assert registry.ensure(user_id)
    assert redis.zscore(key, worker) is None  # still fresh: not written again
    clock.advance(2)
    assert registry.ensure(user_id)
    assert redis.zscore(key, worker) == clock.now + keys.CONN_TTL_SECS


def test_registry_refresh_rewrites_held_users_and_drops_lapsed_ones(
    redis: redis_lib.Redis, clock: FakeClock, worker_ids: tuple[str, str]
) -> None:
    held, gone = _user(), _user()
    hub = Hub()
    registry = Registry(redis, worker_ids[0], hub, clock=clock)
    registry.ensure(gone)
    clock.advance(keys.CONN_TTL_SECS + 1)
    with hub.listen(held):
        registry.refresh()
    assert redis.zscore(keys.connections(held), worker_ids[0]) == (
        clock.now + keys.CONN_TTL_SECS
    )
    # The lapsed registration is forgotten: the next ensure writes again.
    redis.delete(keys.connections(gone))
    assert registry.ensure(gone)
    assert redis.zscore(keys.connections(gone), worker_ids[0]) is not None


def test_registry_refresh_skips_registrations_with_half_their_life_left(
    redis: redis_lib.Redis, clock: FakeClock, worker_ids: tuple[str, str]
) -> None:
    user_id = _user()
    hub = Hub()
    registry = Registry(redis, worker_ids[0], hub, clock=clock)
    hub.register = registry.ensure
    key = keys.connections(user_id)
    with hub.listen(user_id):
        written = redis.zscore(key, worker_ids[0])
        clock.advance(keys.CONN_REFRESH_SECS)
        registry.refresh()
        assert redis.zscore(key, worker_ids[0]) == written
        clock.advance(keys.CONN_REFRESH_SECS)
        registry.refresh()
        assert redis.zscore(key, worker_ids[0]) == clock.now + keys.CONN_TTL_SECS


def test_registry_reports_redis_down(clock: FakeClock) -> None:
    down = redis_lib.Redis(port=free_port(), socket_connect_timeout=0.5)
    assert not Registry(down, "w", Hub(), clock=clock).ensure(_user())


def test_waker_wakes_here_at_once_and_pushes_to_other_workers(
    redis: redis_lib.Redis, clock: FakeClock, worker_ids: tuple[str, str]
) -> None:
    here, there = worker_ids
    user_id, elsewhere = _user(), _user()
    hub = Hub()
    Registry(redis, there, Hub(), clock=clock).ensure(elsewhere)
    Registry(redis, here, hub, clock=clock).ensure(user_id)
    waker = Waker(redis, here, hub, clock=clock)
    with hub.listen(user_id) as waiter:
        waker.wake_users([user_id, elsewhere])
        assert waiter.wait(0)
    # Nothing pushed to this worker's own list; the other worker gets its user.
    assert redis.lrange(keys.wake_list(here), 0, -1) == []
    items = redis.lrange(keys.wake_list(there), 0, -1)
    assert [decode_wake(i) for i in items] == [(elsewhere, None)]
    # Past the registration's expiry, nobody is woken elsewhere.
    redis.delete(keys.wake_list(there))
    clock.advance(keys.CONN_TTL_SECS + 1)
    waker.wake_users([elsewhere])
    assert redis.llen(keys.wake_list(there)) == 0


# ---- the delivery fast path --------------------------------------------------------

MESSAGE = Delivery("message", b'{"message":{"seq":1}}')


def test_delivery_is_encoded_as_the_api_shows_an_event() -> None:
    assert MESSAGE.encoded(7) == b'{"type":"message","id":7,"message":{"seq":1}}'
    assert Delivery("x", b"{}").encoded(1) == b'{"type":"x","id":1}'
    item = encode_delivery("message", {3: 7, 4: 9}, '{"message":{"seq":1}}')
    delivery, event_ids = decode_delivery(item)
    assert event_ids == {3: 7, 4: 9} and delivery.encoded(9) == MESSAGE.encoded(9)
    with pytest.raises(ValueError):
        decode_delivery(b"dmessage|3:x|{}")


def test_a_read_then_contiguous_deliveries_keep_the_head_known(hub: Hub) -> None:
    with hub.listen(1) as waiter:
        assert not waiter.is_at_head(4)  # nothing known before a read
        waiter.saw_head(4, waiter.head_version())
        assert waiter.is_at_head(4)
        hub.deliver(1, 5, MESSAGE)
        assert waiter.wait(0) and waiter.is_at_head(5) and not waiter.is_at_head(4)
        assert waiter.delivered_after(4, 10) == [MESSAGE.encoded(5)]
        assert waiter.delivered_after(3, 10) == []  # event 4 was never delivered
        hub.deliver(1, 6, MESSAGE)
        assert waiter.delivered_after(4, 1) == []  # a page short of the head
        assert waiter.delivered_after(4, 2) == [MESSAGE.encoded(5), MESSAGE.encoded(6)]


def test_a_gap_or_a_wake_without_id_makes_the_head_unknown(hub: Hub) -> None:
    with hub.listen(1) as waiter:
        waiter.saw_head(4, waiter.head_version())
        hub.deliver(1, 6, MESSAGE)  # 5's wake has not come
        assert not waiter.is_at_head(6) and not waiter.is_at_head(4)
        assert waiter.delivered_after(4, 10) == []
        assert waiter.delivered_after(5, 10) == []  # 6 may not be the head
        waiter.saw_head(6, waiter.head_version())
        assert waiter.is_at_head(6)
        assert waiter.delivered_after(5, 10) == [MESSAGE.encoded(6)]
        hub.wake(1)  # a stored event whose id the wake does not carry
        assert not waiter.is_at_head(6)
        assert waiter.delivered_after(5, 10) == []  # a page short of it


def test_a_read_begun_before_a_plain_wake_cannot_vouch_for_the_head(
    hub: Hub,
) -> None:
    with hub.listen(1) as waiter:
        version = waiter.head_version()
        hub.wake(1)  # committed after the read's snapshot, perhaps
        waiter.saw_head(4, version)
        assert not waiter.is_at_head(4)


def test_a_read_that_missed_a_delivery_still_ends_at_the_head(hub: Hub) -> None:
    with hub.listen(1) as waiter:
        version = waiter.head_version()
        hub.deliver(1, 5, MESSAGE)  # arrives while the read (head 4) runs
        waiter.saw_head(4, version)
        assert waiter.is_at_head(5)


def test_head_is_trusted_only_while_registered_and_redis_answers(
    clock: FakeClock,
) -> None:
    hub = Hub(clock=clock, register=lambda user_id: False)
    with hub.listen(1) as waiter:
        waiter.saw_head(4, waiter.head_version())
        assert not waiter.is_at_head(4)
    hub = Hub(clock=clock)
    with hub.listen(1) as waiter:
        waiter.saw_head(4, waiter.head_version())
        hub.redis_ok = False
        assert not waiter.is_at_head(4)
        hub.redis_ok = True
        hub.forget_heads()  # what the dispatcher does on Redis trouble
        assert not waiter.is_at_head(4)


def test_knowledge_outlives_a_re_poll_gap_but_not_the_grace(
    hub: Hub, clock: FakeClock
) -> None:
    with hub.listen(1) as waiter:
        waiter.saw_head(4, waiter.head_version())
    hub.deliver(1, 5, MESSAGE)  # between two polls
    clock.advance(KNOWN_GRACE_SECS / 2)
    with hub.listen(1) as waiter:
        assert waiter.delivered_after(4, 10) == [MESSAGE.encoded(5)]
        assert waiter.is_at_head(5)
    clock.advance(KNOWN_GRACE_SECS + 1)
    with hub.listen(1) as waiter:  # back after the grace: known afresh
        assert not waiter.is_at_head(5) and waiter.delivered_after(4, 10) == []


def test_deliveries_to_unknown_users_are_not_kept(hub: Hub) -> None:
    hub.deliver(1, 5, MESSAGE)
    with hub.listen(1) as waiter:
        assert waiter.delivered_after(4, 10) == []


# ---- dispatcher ---------------------------------------------------------------------


@pytest.fixture
def dispatched(
    services: Any, redis: redis_lib.Redis, worker_ids: tuple[str, str]
) -> Iterator[tuple[Dispatcher, Hub]]:
    worker = worker_ids[0]
    hub = Hub()
    dispatcher = Dispatcher(
        services.redis.url, worker, hub, Registry(redis, worker, hub)
    )
    dispatcher.start()
    try:
        yield dispatcher, hub
    finally:
        dispatcher.stop()
        redis.delete(keys.wake_list(worker))


def test_dispatcher_delivers_wakes_and_skips_malformed_ones(
    dispatched: tuple[Dispatcher, Hub], redis: redis_lib.Redis
) -> None:
    dispatcher, hub = dispatched
    user_id = _user()
    with hub.listen(user_id) as waiter:
        redis.rpush(
            keys.wake_list(dispatcher.worker_id),
            b"not a wake",
            encode_wake(user_id, {"type": "typing"}),
            encode_wake(user_id, None),
        )
        with gevent.Timeout(5):
            while not waiter.take_ephemeral():
                waiter.wait(5)
        with gevent.Timeout(5):
            assert waiter.wait(5)


def test_dispatcher_marks_the_hub_degraded_until_redis_answers(
    services: Any, redis: redis_lib.Redis, worker_ids: tuple[str, str]
) -> None:
    worker = worker_ids[0]
    hub = Hub()
    reachable = False
    dead_port = free_port()

    def client() -> redis_lib.Redis:
        url = services.redis.url if reachable else f"redis://127.0.0.1:{dead_port}"
        return redis_lib.Redis.from_url(url, socket_connect_timeout=0.5)

    dispatcher = Dispatcher(
        services.redis.url,
        worker,
        hub,
        Registry(redis, worker, hub),
        client_factory=client,
    )
    user_id = _user()
    with hub.listen(user_id) as waiter:
        dispatcher.start()
        try:
            with gevent.Timeout(5):
                while hub.redis_ok:
                    gevent.sleep(0.01)
            # Down: every held poll was woken to re-read at once, and waits a
            # short while at a time from then on.
            assert waiter.wait(0)
            waiter.rearm()
            assert not waiter.wait(10)  # cut to the degraded re-check
            reachable = True
            # Back: every held poll re-reads once, and its user is registered.
            with gevent.Timeout(10):
                while not waiter.wait(10):
                    pass
            assert hub.redis_ok
            assert redis.zscore(keys.connections(user_id), worker) is not None
        finally:
            dispatcher.stop()


def test_dispatcher_hands_deliveries_to_the_hub(
    dispatched: tuple[Dispatcher, Hub], redis: redis_lib.Redis
) -> None:
    dispatcher, hub = dispatched
    user_id = _user()
    with hub.listen(user_id) as waiter:
        waiter.saw_head(7, waiter.head_version())
        redis.rpush(
            keys.wake_list(dispatcher.worker_id),
            encode_delivery("message", {user_id: 8}, '{"message":{"seq":1}}'),
        )
        with gevent.Timeout(5):
            assert waiter.wait(5)
        assert waiter.delivered_after(7, 10) == [MESSAGE.encoded(8)]


def test_waker_delivers_here_and_sends_one_item_per_other_worker(
    redis: redis_lib.Redis, clock: FakeClock, worker_ids: tuple[str, str]
) -> None:
    here, there = worker_ids
    local, remote_a, remote_b = _user(), _user(), _user()
    hub = Hub()
    Registry(redis, here, hub, clock=clock).ensure(local)
    for user_id in (remote_a, remote_b):
        Registry(redis, there, Hub(), clock=clock).ensure(user_id)
    waker = Waker(redis, here, hub, clock=clock)
    with hub.listen(local) as waiter:
        waiter.saw_head(2, waiter.head_version())
        waker.deliver(
            "message", {local: 3, remote_a: 4, remote_b: 5}, '{"message":{"seq":1}}'
        )
        assert waiter.wait(0) and waiter.delivered_after(2, 10) == [MESSAGE.encoded(3)]
    assert redis.lrange(keys.wake_list(here), 0, -1) == []
    items = redis.lrange(keys.wake_list(there), 0, -1)
    assert len(items) == 1
    assert decode_delivery(items[0])[1] == {remote_a: 4, remote_b: 5}
