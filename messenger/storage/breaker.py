"""A circuit breaker per physical database: fail fast while a server is down.

Without it every request touching a dead server's data waits out a connect
timeout (or, for a server that is hung, longer), tying up greenlets and, in a
fan-out, connections to the healthy servers too. After a failure the breaker is
open for a backoff (messenger/backoff.py: doubling up to BREAKER_MAX_SECS,
jittered so workers don't probe in lockstep); calls in that time fail at once.
When it ends, one call is let through as a probe (half-open): its success closes
the breaker, its failure opens it again for a longer wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from messenger.backoff import Backoff

# The first failure opens the breaker this long; a server still down after
# that is probed less and less often, up to BREAKER_MAX_SECS apart, so a
# returning server is in use again within a few seconds.
BREAKER_FIRST_SECS = 0.25
BREAKER_MAX_SECS = 4.0


class Breaker:
    """The state of one database's circuit: closed, open until a time, or probing."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._backoff = Backoff(BREAKER_FIRST_SECS, BREAKER_MAX_SECS, jitter=(0.8, 1.2))
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        """Whether calls fail fast now (a failure without a success since)."""
        return self._backoff.failures > 0

    @property
    def retry_in_secs(self) -> float:
        return max(0.0, self._open_until - self.clock())

    def allow(self) -> bool:
        """Whether a call may go to the database now (True for the one probe)."""
        if not self.is_open:
            return True
        now = self.clock()
        if now < self._open_until:
            return False
        # The probe: others keep failing fast until it reports, or, should it
        # never report (killed mid-call), until the longest wait has passed.
        self._open_until = now + BREAKER_MAX_SECS
        return True

    def succeeded(self) -> None:
        if self._backoff.failures:
            self._backoff.reset()
            self._open_until = 0.0

    def failed(self) -> None:
        self._open_until = self.clock() + self._backoff.failed()
