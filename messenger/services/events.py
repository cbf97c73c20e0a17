"""The long poll: join the hub, read after the cursor, wait, re-read.

A held poll holds no database connection and no Redis connection of its own: it
is an entry in this worker's hub until a wake-up, its deadline, a shutdown or its
client hanging up (realtime/hub.py: Hub.listen does the joining and the undoing).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from messenger import runtime
from messenger.errors import CursorExpired, Unavailable
from messenger.models import Event
from messenger.storage import events as store
from messenger.storage.pools import ShardFrozen

logger = logging.getLogger(__name__)

# How long a poll woken by ephemeral events only waits for more of them.
EPHEMERAL_LINGER_SECS = 0.25


@dataclass(frozen=True)
class PollResult:
    events: list[Event]
    ephemeral: list[dict[str, Any]] = field(default_factory=list)
    cursor: str = "0"
    more: bool = False
    # Stored events as the wake delivered them, already JSON (the fast path:
    # realtime/hub.py); when present, `events` is empty.
    encoded: list[bytes] = field(default_factory=list)


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
    runtime.get().hub.note_instant_poll(user_id)
    with runtime.get().router.on_user(user_id, "poll_head", transaction=False) as cur:
        found = store.head(cur, user_id)
    if found is None:
        raise Unavailable("This account's event stream is not ready; try again.")
    return str(found)


def poll(
    user_id: int,
    after: int,
    *,
    timeout_secs: float,
    limit: int,
    sock: socket.socket | None = None,
) -> PollResult:
    """Events after the cursor, waiting up to timeout_secs for the first one.

    Args:
        sock: the client's socket, if the server exposes it: a held poll is
            answered as soon as the client hangs up.

    Raises:
        CursorExpired: the cursor is older than the retained events, or unknown.
        Unavailable: the user's shard is down.
    """
    rt = runtime.get()
    # A shard being moved answers 503 even where the fast path would not read it.
    rt.router.check_not_frozen(rt.router.shard_of(user_id))
    hub = rt.hub
    deadline = hub.clock() + timeout_secs
    lingered = False
    ephemeral: list[dict[str, Any]] = []
    # Joined before the first read: a wake between the read and the wait counts.
    with hub.listen(user_id, sock, hold=timeout_secs > 0) as waiter:
        first_read = True
        while True:
            waiter.rearm()
            # The fast path (realtime/hub.py): the events right after the cursor
            # as the wake delivered them, or, at the known head, no read at all.
            # A poll's deadline always reads: the database stays the truth.
            # Only a whole answer comes from the wakes (up to the known head);
            # else the read gives the page as full as it would have been.
            delivered = waiter.delivered_after(after, limit)
            if delivered:
                return PollResult(
                    [],
                    ephemeral + waiter.take_ephemeral(),
                    str(after + len(delivered)),
                    False,
                    delivered,
                )
            skipped = deadline - hub.clock() > 0 and waiter.is_at_head(after)
            if skipped:
                page = store.Page(after, 0, [])
            else:
                version = waiter.head_version()
                try:
                    page = _read(user_id, after, limit)
                except ShardFrozen:
                    if first_read:
                        raise
                    # The shard froze for a move while this poll was held:
                    # answer with the cursor unchanged; the client polls again.
                    return PollResult(
                        [], ephemeral + waiter.take_ephemeral(), str(after), False
                    )
                waiter.saw_head(page.head, version)
            first_read = False
            ephemeral += waiter.take_ephemeral()
            remaining = deadline - hub.clock()
            if skipped and remaining <= 0 and not waiter.released:
                continue  # the deadline came during the check: read once
            if ephemeral and not page.events and not lingered and remaining > 0:
                # Presence and typing come in bursts (a group coming online):
                # gather a moment's worth into one answer instead of one each,
                # but answer at once if a stored event arrives meanwhile.
                lingered = True
                waiter.linger(min(EPHEMERAL_LINGER_SECS, remaining))
                continue
            if page.events or ephemeral or waiter.released or remaining <= 0:
                events = page.events[:limit]
                cursor = events[-1].event_id if events else after
                return PollResult(
                    events, ephemeral, str(cursor), len(page.events) > limit
                )
            waiter.wait(remaining)
