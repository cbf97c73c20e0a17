"""Exponential backoff: how long to wait after a failure before trying again.

One rule for every retry loop: the first wait is `first_secs`, each further
failure in a row doubles it up to `max_secs`, an optional jitter scales it by a
random factor (so many clients that failed together don't retry in lockstep),
and a server's Retry-After, when it gave one, is a floor.
"""

from __future__ import annotations

import random

# A wait multiplied by 1: the same every time.
NO_JITTER = (1.0, 1.0)
# Doublings beyond this change nothing (every cap in use is reached long before)
# and keep 2 ** n a float-sized number however long a failure lasts.
_MAX_DOUBLINGS = 60


def backoff_secs(
    attempt: int,
    first_secs: float,
    max_secs: float,
    *,
    jitter: tuple[float, float] = NO_JITTER,
    retry_after_secs: float | None = None,
) -> float:
    """The wait after the attempt-th failure in a row (1 for the first).

    Args:
        attempt: failures so far, counting the one just seen; below 1 counts as 1.
        first_secs: the wait after the first failure.
        max_secs: no wait is longer before jitter, nor is a Retry-After honoured
            past it.
        jitter: the wait is multiplied by a factor drawn uniformly from this
            range: (0.5, 1.0) keeps half of it fixed and makes half random.
        retry_after_secs: what the server asked for, if anything; the wait is
            never shorter.
    """
    doublings = min(max(0, attempt - 1), _MAX_DOUBLINGS)
    delay = min(max_secs, first_secs * 2**doublings)
    low, high = jitter
    if (low, high) != NO_JITTER:
        delay *= random.uniform(low, high)
    if retry_after_secs is not None:
        delay = max(delay, min(retry_after_secs, max_secs))
    return delay


class Backoff:
    """The failures in a row of one retry loop and the wait each calls for.

    retry = Backoff(0.1, 5.0)
    while not stopping:
        try:
            work()
            retry.reset()
        except redis.RedisError:
            stopping.wait(retry.failed())
    """

    def __init__(
        self,
        first_secs: float,
        max_secs: float,
        *,
        jitter: tuple[float, float] = NO_JITTER,
    ) -> None:
        self.first_secs = first_secs
        self.max_secs = max_secs
        self.jitter = jitter
        self.failures = 0

    def failed(self, retry_after_secs: float | None = None) -> float:
        """Count a failure; returns how long to wait before the next try."""
        self.failures += 1
        return backoff_secs(
            self.failures,
            self.first_secs,
            self.max_secs,
            jitter=self.jitter,
            retry_after_secs=retry_after_secs,
        )

    def reset(self) -> None:
        """A try succeeded: the next failure waits first_secs again."""
        self.failures = 0
