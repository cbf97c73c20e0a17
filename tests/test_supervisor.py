"""The supervisor's policy: restart with exponential backoff, give up loudly.

Driven by a fake clock and stand-in children (the real servers are killed in
tests/system/test_supervision.py).
"""

from typing import Any

import pytest

from messenger.supervisor import Child, SupervisionFailed, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Server:
    """A stand-in child: alive or not; a restart can be made to fail."""

    def __init__(self) -> None:
        self.alive = True
        self.restarts = 0
        self.fail_restarts = False

    def pid(self) -> int | None:
        return 4242 if self.alive else None

    def restart(self) -> None:
        if self.fail_restarts:
            raise RuntimeError("port taken")
        self.restarts += 1
        self.alive = True


def supervised(server: Server, clock: Clock, lines: list[str]) -> Supervisor:
    child = Child("Redis", pid=server.pid, restart=server.restart)
    return Supervisor([child], say=lines.append, clock=clock)


def test_dead_child_is_restarted_after_backoff_and_logged() -> None:
    clock, server, lines = Clock(), Server(), []
    sup = supervised(server, clock, lines)
    server.alive = False
    sup.check_once()
    assert server.restarts == 0  # the first backoff (0.5 s) has not elapsed
    clock.now += 0.5
    sup.check_once()
    assert server.restarts == 1
    assert any("Redis exited" in line for line in lines)
    assert any("Redis is back" in line and "0.50 s" in line for line in lines)


def test_backoff_doubles_with_each_failure_within_the_window() -> None:
    sup = supervised(Server(), Clock(), [])
    assert [sup.backoff_secs(n) for n in range(1, 6)] == [0.5, 1, 2, 4, 8]
    assert sup.backoff_secs(20) == 30


def test_gives_up_after_five_fast_failures() -> None:
    clock, server, lines = Clock(), Server(), []
    sup = supervised(server, clock, lines)
    with pytest.raises(SupervisionFailed, match="Redis failed 5 times within 60 s"):
        for _ in range(10):
            server.alive = False
            sup.check_once()
            clock.now += 8  # the longest backoff before the fifth failure
            sup.check_once()
            clock.now += 1
    assert server.restarts == 4


def test_failed_restarts_count_and_slow_failures_do_not() -> None:
    clock, server, lines = Clock(), Server(), []
    sup = supervised(server, clock, lines)
    for _ in range(6):  # one failure every 61 s: never 5 within 60 s
        server.alive = False
        sup.check_once()
        clock.now += 1
        sup.check_once()
        clock.now += 60
    assert server.restarts == 6
    server.alive = False
    server.fail_restarts = True
    with pytest.raises(SupervisionFailed, match="did not restart"):
        for _ in range(10):
            clock.now += 9  # past each backoff, all within the window
            sup.check_once()


def test_watch_returns_the_main_process_code() -> None:
    class Main:
        returncode = 3

        def poll(self) -> Any:
            return 3

    sup = supervised(Server(), Clock(), [])
    assert sup.watch(Main()) == 3  # type: ignore[arg-type]
