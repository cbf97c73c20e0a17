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
from messenger.realtime.hub import CLIENT_GONE, SHUTDOWN, SUPERSEDED, Hub
from messenger.realtime.wakeups import Registry, Waker, decode_wake, encode_wake


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
            reachable = True
            # Back: every held poll re-reads once, and its user is registered.
            with gevent.Timeout(10):
                assert waiter.wait(10)
            assert hub.redis_ok
            assert redis.zscore(keys.connections(user_id), worker) is not None
        finally:
            dispatcher.stop()
