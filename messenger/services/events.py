"""The long poll: join the hub, read after the cursor, wait, re-read.

A held poll holds no database connection and no Redis connection of its own: it
is an entry in this worker's hub until a wake-up, its deadline, a shutdown or its
client hanging up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from messenger import runtime
from messenger.errors import CursorExpired, Unavailable
from messenger.models import Event
from messenger.realtime.hub import Waiter
from messenger.storage import events as store

logger = logging.getLogger(__name__)

# While Redis is unreachable, wake-ups cannot arrive: re-read this often instead.
DEGRADED_RECHECK_SECS = 1.0
# How long a poll woken by ephemeral events only waits for more of them.
EPHEMERAL_LINGER_SECS = 0.25

# Called when a poll starts waiting / ends (presence, metrics). Each takes the
# user id; they must not block and must not raise.
ON_POLL_START: list[Callable[[int], None]] = []
ON_POLL_END: list[Callable[[int], None]] = []


@dataclass(frozen=True)
class PollResult:
    events: list[Event]
    ephemeral: list[dict[str, Any]] = field(default_factory=list)
    cursor: str = "0"
    more: bool = False


def _read(user_id: int, after: int, limit: int) -> store.Page:
    with runtime.get().router.on_user(user_id, "poll_read", transaction=False) as cur:
        page = store.read(cur, user_id, after, limit + 1)
    if page is None:
        raise Unavailable("This account's event stream is not ready; try again.")
    if after < page.trimmed_through or after > page.head:
        raise CursorExpired(
            "This cursor is outside the retained events; resync "
            "from history and poll without after."
        )
    return page


def head(user_id: int) -> str:
    """The cursor to start from: the newest event's id."""
    _notify(ON_POLL_START, user_id)
    _notify(ON_POLL_END, user_id)
    with runtime.get().router.on_user(user_id, "poll_head", transaction=False) as cur:
        found = store.head(cur, user_id)
    if found is None:
        raise Unavailable("This account's event stream is not ready; try again.")
    return str(found[0])


def poll(
    user_id: int,
    after: int,
    *,
    timeout_secs: float,
    limit: int,
    watch: Callable[[Waiter], Callable[[], None]] | None = None,
) -> PollResult:
    """Events after the cursor, waiting up to timeout_secs for the first one.

    Args:
        watch: called with the waiter before waiting; it may release the waiter
            when the client hangs up, and returns a function that stops watching.

    Raises:
        CursorExpired: the cursor is older than the retained events, or unknown.
        Unavailable: the user's shard is down.
    """
    rt = runtime.get()
    hub = rt.hub
    deadline = hub.clock() + timeout_secs
    # Join before the first read: a wake between the read and the wait still counts.
    waiter = hub.join(user_id)
    _notify(ON_POLL_START, user_id)
    stop_watching = None
    lingered = False
    try:
        registered = timeout_secs > 0 and rt.registry.ensure(user_id)
        ephemeral: list[dict[str, Any]] = []
        while True:
            waiter.rearm()
            page = _read(user_id, after, limit)
            ephemeral += waiter.take_ephemeral()
            remaining = deadline - hub.clock()
            if ephemeral and not page.events and not lingered and remaining > 0:
                # Presence and typing come in bursts (a group coming online):
                # gather a moment's worth into one answer instead of one each,
                # but answer at once if a stored event arrives meanwhile.
                lingered = True
                _linger(waiter, min(EPHEMERAL_LINGER_SECS, remaining), hub.clock)
                continue
            if page.events or ephemeral or waiter.released or remaining <= 0:
                events = page.events[:limit]
                cursor = events[-1].event_id if events else after
                return PollResult(
                    events, ephemeral, str(cursor), len(page.events) > limit
                )
            if stop_watching is None and watch is not None:
                stop_watching = watch(waiter)
            if not registered and hub.redis_ok:
                registered = rt.registry.ensure(user_id)
            if not (registered and hub.redis_ok):
                remaining = min(remaining, DEGRADED_RECHECK_SECS)
            waiter.wait(remaining)
    finally:
        if stop_watching is not None:
            stop_watching()
        hub.leave(waiter)
        _notify(ON_POLL_END, user_id)


def _linger(waiter: Waiter, secs: float, clock: Callable[[], float]) -> None:
    """Wait up to secs for more ephemeral events; stop early for stored ones."""
    end = clock() + secs
    while not waiter.stored_wake and not waiter.released:
        left = end - clock()
        if left <= 0:
            return
        waiter.event.clear()
        waiter.wait(left)


def _notify(hooks: list[Callable[[int], None]], user_id: int) -> None:
    for hook in hooks:
        try:
            hook(user_id)
        except Exception:  # noqa: BLE001 - presence must never break a poll
            logger.exception("poll hook failed for user %s", user_id)
