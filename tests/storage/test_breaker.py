"""The per-database circuit breaker: fail fast while down, probe, recover."""

from typing import Any

import pytest

from messenger.errors import Unavailable
from messenger.storage import breaker as breaker_module
from messenger.storage.breaker import BREAKER_MAX_SECS, Breaker
from messenger.storage.pools import Pool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_on_failure_and_lets_one_probe_through_later() -> None:
    clock = Clock()
    b = Breaker(clock)
    assert b.allow()
    b.failed()
    assert b.is_open and not b.allow()
    clock.now += breaker_module.BREAKER_FIRST_SECS * 1.3
    assert b.allow()  # the probe
    assert not b.allow()  # others wait for it
    b.succeeded()
    assert not b.is_open and b.allow()


def test_failed_probes_wait_longer_each_time_up_to_the_cap() -> None:
    clock = Clock()
    b = Breaker(clock)
    waits = []
    for _ in range(8):
        b.failed()
        waits.append(b.retry_in_secs)
        clock.now += b.retry_in_secs
        assert b.allow()
    assert waits[1] > waits[0]
    assert max(waits) <= BREAKER_MAX_SECS * 1.2


def test_a_probe_that_never_reports_does_not_close_the_circuit_forever() -> None:
    clock = Clock()
    b = Breaker(clock)
    b.failed()
    clock.now += 1
    assert b.allow()  # a probe that is killed before it reports
    clock.now += BREAKER_MAX_SECS + 0.1
    assert b.allow()


def test_pool_of_a_dead_server_fails_fast_after_the_first_failure(
    monkeypatch: Any,
) -> None:
    from messenger.embedded import free_port

    pool = Pool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/none",
        size=2,
        checkout_timeout_secs=1,
        connect_timeout_secs=2,
        statement_timeout_ms=1000,
    )
    connects = []
    real_connect = pool._connect
    monkeypatch.setattr(pool, "_connect", lambda: connects.append(1) or real_connect())
    for _ in range(5):
        with pytest.raises(Unavailable), pool.connection():
            pass
    assert len(connects) == 1
    assert pool.is_down
