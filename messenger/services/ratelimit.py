"""Rate limits in Redis: a sliding window per (limit, subject).

    ratelimit.check("send", f"user:{user_id}")   # raises RateLimited (429)

The limits come from MESSENGER_RATE_LIMITS (settings.parse_rate_limits), read at
call time so a deployment (or a test) can change them without a new process.

Sliding window counter: the current fixed window's count plus the previous
window's count weighted by how much of it still overlaps the sliding window. It
needs two small keys per subject and smooths the burst a plain fixed window
allows at its edges. A refused request is not counted, so a client that waits
for Retry-After gets through.

A limiter must never make an outage worse: when Redis fails, the error is
counted and Redis is not asked again for a few seconds, so a hung Redis costs one
request one timeout, not every request. Meanwhile most limits stand aside, but
the ones that guard passwords and accounts (login, registration) fall back to a
per-process window of the same size (so with N workers, up to N times the limit),
rather than let guessing run unlimited while Redis is down.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable

import redis

from messenger import metrics, runtime
from messenger.errors import RateLimited
from messenger.realtime import keys
from messenger.settings import RateLimit, parse_rate_limits

logger = logging.getLogger(__name__)

# After a Redis error the limiter stands aside this long before trying again.
REDIS_BACKOFF_SECS = 5.0

# KEYS: current window, previous window. ARGV: limit, weight of the previous
# window (0..1), TTL. Counts the request only when it is allowed.
# Returns {allowed, current count, previous count}.
_SCRIPT = """
local limit = tonumber(ARGV[1])
local weight = tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
if current + 1 + previous * weight > limit then
  return {0, current, previous}
end
current = redis.call('INCR', KEYS[1])
if current == 1 then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return {1, current, previous}
"""


# Limits kept by each process while Redis is down.
LOCAL_FALLBACK_LIMITS = frozenset({"login", "login_handle", "register"})
# Subjects a process remembers for its fallback; the oldest are forgotten first.
LOCAL_SUBJECTS_MAX = 50_000


class LocalWindows:
    """The sliding window of _SCRIPT, in this process's memory (bounded)."""

    def __init__(self) -> None:
        # (name, subject) -> (window number, count in it, count in the one before)
        self._counts: OrderedDict[tuple[str, str], tuple[int, int, int]] = OrderedDict()

    def check(self, name: str, subject: str, limit: RateLimit, now: float) -> None:
        window = int(now // limit.window_secs)
        elapsed = now - window * limit.window_secs
        weight = 1.0 - elapsed / limit.window_secs
        key = (name, subject)
        seen, current, previous = self._counts.pop(key, (window, 0, 0))
        if seen == window - 1:
            current, previous = 0, current
        elif seen != window:
            current, previous = 0, 0
        if current + 1 + previous * weight > limit.count:
            self._counts[key] = (window, current, previous)
            metrics.RATE_LIMITED.labels(limit=name).inc()
            raise RateLimited(
                "Too many requests; try again later.",
                _retry_after(limit, current, previous, elapsed),
            )
        self._counts[key] = (window, current + 1, previous)
        while len(self._counts) > LOCAL_SUBJECTS_MAX:
            self._counts.popitem(last=False)


class Limiter:
    """Checks requests against the configured limits; one per process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._parsed: tuple[str, dict[str, RateLimit]] = ("", {})
        self._skip_until = 0.0
        self._script: redis.commands.core.Script | None = None
        self._script_client: redis.Redis | None = None
        self._local = LocalWindows()

    def limits(self) -> dict[str, RateLimit]:
        raw = runtime.get().settings.rate_limits
        if self._parsed[0] != raw:
            self._parsed = (raw, parse_rate_limits(raw))
        return self._parsed[1]

    def check(self, name: str, subject: str) -> None:
        """Count one request of `subject` against limit `name`.

        Raises:
            RateLimited: over the limit; Retry-After says when one more fits.
        """
        limit = self.limits().get(name)
        if limit is None:
            return
        subject = _compact(subject)
        now = self.clock()
        if now < self._skip_until:
            self._fallback(name, subject, limit, now)
            return
        window = int(now // limit.window_secs)
        elapsed = now - window * limit.window_secs
        weight = 1.0 - elapsed / limit.window_secs
        try:
            allowed, current, previous = self._run(
                [
                    keys.rate_limit(name, subject, window),
                    keys.rate_limit(name, subject, window - 1),
                ],
                [limit.count, f"{weight:.6f}", 2 * limit.window_secs],
            )
        except redis.RedisError as exc:
            metrics.REDIS_ERRORS.labels(op="rate_limit").inc()
            self._skip_until = now + REDIS_BACKOFF_SECS
            logger.warning(
                "rate limits off for %.0f s (login and registration limited per "
                "process): Redis: %s",
                REDIS_BACKOFF_SECS,
                exc,
            )
            self._fallback(name, subject, limit, now)
            return
        if allowed:
            return
        metrics.RATE_LIMITED.labels(limit=name).inc()
        raise RateLimited(
            "Too many requests; try again later.",
            _retry_after(limit, int(current), int(previous), elapsed),
        )

    def _fallback(self, name: str, subject: str, limit: RateLimit, now: float) -> None:
        if name in LOCAL_FALLBACK_LIMITS:
            self._local.check(name, subject, limit, now)

    def _run(self, key_names: list[str], args: list[int | str]) -> list[int]:
        client = runtime.get().redis
        if self._script is None or self._script_client is not client:
            self._script = client.register_script(_SCRIPT)
            self._script_client = client
        return self._script(keys=key_names, args=args)  # type: ignore[no-any-return]


_PLAIN_SUBJECT = re.compile(r"^[A-Za-z0-9_:.\-]{1,64}\Z")


def _compact(subject: str) -> str:
    """Client-chosen subjects (a handle tried at login) become a short digest."""
    if _PLAIN_SUBJECT.match(subject):
        return subject
    digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()
    return "sha256:" + digest[:32]


def _retry_after(limit: RateLimit, current: int, previous: int, elapsed: float) -> int:
    """Whole seconds until one more request fits the sliding window."""
    window = limit.window_secs
    if current + 1 > limit.count:
        # Only the next window helps; in it this one weighs in as "previous",
        # less and less as the next window goes on.
        wait = window - elapsed + window * (1 - (limit.count - 1) / current)
        return max(1, math.ceil(wait))
    # The previous window's weight must fall until current + 1 fits.
    room = limit.count - current - 1
    needed_weight = room / previous if previous else 1.0
    wait = window * (1 - needed_weight) - elapsed
    return max(1, math.ceil(wait))


_limiter = Limiter()


def check(name: str, subject: str) -> None:
    """Count one request against a limit (see Limiter.check)."""
    _limiter.check(name, subject)


def reset_backoff() -> None:
    """Forget a Redis failure at once (tests; an operator's fix)."""
    _limiter._skip_until = 0.0
