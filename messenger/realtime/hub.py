"""The per-worker hub: user_id → the polls of that user waiting on this worker.

A poll joins, reads the database, waits, re-reads, and leaves on every exit path.
Wake-ups carry user ids only (plus ephemeral events, which are never stored); the
database stays the truth. The hub takes a clock so tests can move time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent.event

from messenger import metrics

logger = logging.getLogger(__name__)

# Why a waiter was released without a wake.
SUPERSEDED = "superseded"  # the user opened more polls than allowed
SHUTDOWN = "shutdown"  # the worker is stopping: answer now, the client re-polls
CLIENT_GONE = "client_gone"


class Waiter:
    """One held poll. `event` is set when there is something to look at."""

    __slots__ = (
        "user_id",
        "event",
        "ephemeral",
        "released",
        "joined_at",
        "stored_wake",
        "__weakref__",
    )

    def __init__(self, user_id: int, joined_at: float) -> None:
        self.user_id = user_id
        self.event = gevent.event.Event()
        self.ephemeral: list[dict[str, Any]] | None = None
        self.released: str | None = None
        self.joined_at = joined_at
        # True once woken for stored events (not only ephemeral ones).
        self.stored_wake = False

    def wait(self, timeout_secs: float) -> bool:
        """Block this greenlet until woken or the timeout; True when woken."""
        return self.event.wait(max(0.0, timeout_secs))

    def rearm(self) -> None:
        """Clear the wake flags before re-reading, so a wake during the read counts."""
        self.event.clear()
        self.stored_wake = False

    def take_ephemeral(self) -> list[dict[str, Any]]:
        items, self.ephemeral = self.ephemeral or [], None
        return items


class Hub:
    """Held polls of this worker, keyed by user id."""

    def __init__(
        self,
        *,
        max_polls_per_user: int = 8,
        clock: Callable[[], float] = time.monotonic,
        on_first_join: Callable[[int], None] | None = None,
        on_last_leave: Callable[[int], None] | None = None,
    ) -> None:
        self.clock = clock
        self.max_polls_per_user = max_polls_per_user
        # dict, not set: insertion order finds the oldest poll of a user.
        self._waiters: dict[int, dict[Waiter, None]] = {}
        self._count = 0
        self.draining = False
        # False while the dispatcher cannot reach Redis: waiters then re-read the
        # database on a short interval instead of trusting wake-ups.
        self.redis_ok = True
        self.on_first_join = on_first_join
        self.on_last_leave = on_last_leave

    # -- polls -------------------------------------------------------------------

    def join(self, user_id: int) -> Waiter:
        """Register a poll before it reads the database, so no wake is lost."""
        waiter = Waiter(user_id, self.clock())
        if self.draining:
            waiter.released = SHUTDOWN
            waiter.event.set()
            return waiter
        polls = self._waiters.get(user_id)
        first = polls is None
        if polls is None:
            polls = self._waiters[user_id] = {}
        while len(polls) >= self.max_polls_per_user:
            oldest = next(iter(polls))
            self._release(oldest, SUPERSEDED)
        polls[waiter] = None
        self._count += 1
        metrics.HELD_POLLS.inc()
        if first and self.on_first_join:
            self.on_first_join(user_id)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """Forget a poll; idempotent."""
        polls = self._waiters.get(waiter.user_id)
        if polls is None or waiter not in polls:
            return
        del polls[waiter]
        self._count -= 1
        metrics.HELD_POLLS.dec()
        if not polls:
            del self._waiters[waiter.user_id]
            if self.on_last_leave:
                self.on_last_leave(waiter.user_id)

    def _release(self, waiter: Waiter, reason: str) -> None:
        waiter.released = reason
        waiter.event.set()
        self.leave(waiter)

    # -- wake-ups ----------------------------------------------------------------

    def wake(self, user_id: int, ephemeral: dict[str, Any] | None = None) -> int:
        """Wake every poll of a user on this worker; returns how many."""
        polls = self._waiters.get(user_id)
        if not polls:
            return 0
        for waiter in polls:
            if ephemeral is not None:
                if waiter.ephemeral is None:
                    waiter.ephemeral = []
                waiter.ephemeral.append(ephemeral)
            else:
                waiter.stored_wake = True
            waiter.event.set()
        return len(polls)

    def wake_all(self) -> None:
        """Wake every poll (after a Redis outage: wake-ups may have been missed)."""
        for polls in list(self._waiters.values()):
            for waiter in polls:
                waiter.stored_wake = True
                waiter.event.set()

    def drain(self) -> None:
        """Answer every held poll now and refuse new ones (graceful shutdown)."""
        self.draining = True
        for polls in list(self._waiters.values()):
            for waiter in list(polls):
                self._release(waiter, SHUTDOWN)

    # -- introspection -----------------------------------------------------------

    def users(self) -> list[int]:
        return list(self._waiters)

    def is_holding(self, user_id: int) -> bool:
        return user_id in self._waiters

    def __len__(self) -> int:
        return self._count
