"""The per-worker hub: user_id → the polls of that user waiting on this worker.

A poll is `with hub.listen(user_id, sock) as waiter:` — it joins before reading
the database, waits, re-reads, and leaves on every exit path. A wake-up carries a
user id, an ephemeral event (never stored), or a delivery: a stored event with
the user's new event id. The hub takes a clock so tests can move time.

The delivery fast path. Per-user event ids have no gaps, and every stored event
wakes every worker registered for its user (after its commit). So, for a user
whose polls it holds (and for a few seconds after the last one), the hub keeps:
- the user's head, once a database read (made while registered in Redis) told
  it and every wake since carried the next id: a poll at the head then waits
  without a read;
- the events delivered lately, pre-encoded: a poll whose cursor is exactly the id
  before them answers with them, up to the head, without reading the database.
A wake without an id, a gap in the ids, or Redis trouble makes the head unknown
again, and the next poll reads. A poll's timeout always reads, so even a wake
lost on its way costs no more than it did before: the database stays the truth.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent.event

from messenger import metrics
from messenger.backoff import backoff_secs
from messenger.realtime.hangup import watch_hangup

logger = logging.getLogger(__name__)

# Why a waiter was released without a wake.
SUPERSEDED = "superseded"  # the user opened more polls than allowed
SHUTDOWN = "shutdown"  # the worker is stopping: answer now, the client re-polls
CLIENT_GONE = "client_gone"

# While Redis is unreachable (or this poll could not register there), wake-ups
# cannot arrive: a held poll re-reads the database instead, first after about
# this long, then backing off (doubling, jittered) to DEGRADED_RECHECK_MAX_SECS.
# A fixed second made 10,000 held polls 10,000 queries a second per worker, all
# in step, just when a dependency was already in trouble.
DEGRADED_RECHECK_SECS = 1.0
DEGRADED_RECHECK_MAX_SECS = 8.0
# Half of each re-read wait is random, so polls that lost Redis together spread.
DEGRADED_RECHECK_JITTER = (0.5, 1.0)

# What the hub remembers of a user after their last poll here ends: the client's
# re-poll arrives within milliseconds; this covers a slow client, and stays far
# inside the registration's lifetime (keys.CONN_TTL_SECS, at least half of which
# is left whenever a poll starts), so every wake of the user still arrives.
KNOWN_GRACE_SECS = 5.0
# Delivered events kept per user: a burst a client has not yet polled for.
KNOWN_EVENTS_MAX = 16


class Delivery:
    """A stored event as a wake carries it: its type and its fields as a JSON
    object (the same bytes for every recipient; only the id differs)."""

    __slots__ = ("event_type", "fields_json")

    def __init__(self, event_type: str, fields_json: bytes) -> None:
        self.event_type = event_type
        self.fields_json = fields_json

    def encoded(self, event_id: int) -> bytes:
        """The event as API.md shows it: {"type", "id", its fields}."""
        head = b'{"type":"%s","id":%d' % (self.event_type.encode(), event_id)
        rest = self.fields_json[1:]
        return head + (b"," + rest if rest != b"}" else rest)


class _Known:
    """What this worker knows of one user's event stream; see the module doc."""

    __slots__ = ("head", "version", "events")

    def __init__(self) -> None:
        self.head: int | None = None
        # Bumped whenever the head becomes unknown: a read started before then
        # cannot vouch for the head any more.
        self.version = 0
        self.events: dict[int, bytes] = {}

    def forget_head(self) -> None:
        self.head = None
        self.version += 1

    def advance(self) -> None:
        if self.head is not None:
            while self.head + 1 in self.events:
                self.head += 1

    def add(self, event_id: int, encoded: bytes) -> None:
        self.events[event_id] = encoded
        if len(self.events) > KNOWN_EVENTS_MAX:
            del self.events[min(self.events)]
        if self.head is not None and event_id > self.head + 1:
            self.forget_head()  # a gap: an event whose wake has not come (yet)
        self.advance()

    def after(self, cursor: int, limit: int) -> list[bytes]:
        found: list[bytes] = []
        event_id = cursor + 1
        while len(found) < limit and event_id in self.events:
            found.append(self.events[event_id])
            event_id += 1
        return found


class Waiter:
    """One held poll, as its service sees it: wait, re-arm, take ephemeral events.

    Only the hub and the hang-up watcher change its state.
    """

    __slots__ = (
        "hub",
        "user_id",
        "_event",
        "_ephemeral",
        "_released",
        "_stored_wake",
        "_registered",
        "_rechecks",
        "__weakref__",
    )

    def __init__(self, hub: Hub, user_id: int) -> None:
        self.hub = hub
        self.user_id = user_id
        self._event = gevent.event.Event()
        self._ephemeral: list[dict[str, Any]] | None = None
        self._released: str | None = None
        # True once woken for stored events (not only ephemeral ones).
        self._stored_wake = False
        # Whether senders on other workers can find this poll (Registry.ensure).
        self._registered = False
        # Degraded waits in a row (see recheck_secs).
        self._rechecks = 0

    @property
    def released(self) -> str | None:
        """Why the poll must answer now (SUPERSEDED, SHUTDOWN, CLIENT_GONE), or None."""
        return self._released

    def wait(self, timeout_secs: float) -> bool:
        """Block this greenlet until woken or the timeout; True when woken.

        While wake-ups can't be trusted (Redis down, or this poll not registered
        there) the wait is cut to recheck_secs(), so the caller re-reads.
        """
        if not self._registered and self.hub.redis_ok:
            self._registered = self.hub.register(self.user_id)
        if not (self._registered and self.hub.redis_ok):
            timeout_secs = min(timeout_secs, self.recheck_secs())
        else:
            self._rechecks = 0
        return self._event.wait(max(0.0, timeout_secs))

    def recheck_secs(self) -> float:
        """How long this degraded wait lasts before the caller re-reads: about
        DEGRADED_RECHECK_SECS the first time, doubling (jittered) each time in a
        row up to DEGRADED_RECHECK_MAX_SECS."""
        self._rechecks += 1
        return backoff_secs(
            self._rechecks,
            DEGRADED_RECHECK_SECS,
            DEGRADED_RECHECK_MAX_SECS,
            jitter=DEGRADED_RECHECK_JITTER,
        )

    def linger(self, secs: float) -> None:
        """Wait up to secs for more ephemeral events; stop early for stored ones
        (or a release)."""
        end = self.hub.clock() + secs
        while not self._stored_wake and self._released is None:
            left = end - self.hub.clock()
            if left <= 0:
                return
            self._event.clear()
            self._event.wait(left)

    def rearm(self) -> None:
        """Clear the wake flags before re-reading, so a wake during the read counts."""
        self._event.clear()
        self._stored_wake = False

    def take_ephemeral(self) -> list[dict[str, Any]]:
        items, self._ephemeral = self._ephemeral or [], None
        return items

    # -- the delivery fast path (see the module doc) -------------------------------

    def delivered_after(self, cursor: int, limit: int) -> list[bytes]:
        """The events after cursor up to the user's head, pre-encoded, as the
        wakes delivered them to this worker: the whole answer a read would give
        (up to limit). [] unless this worker knows the head and holds a copy of
        every event up to it."""
        known = self.hub._known.get(self.user_id)
        if known is None or known.head is None or not self.hub.redis_ok:
            return []
        found = known.after(cursor, limit)
        return found if found and cursor + len(found) == known.head else []

    def is_at_head(self, cursor: int) -> bool:
        """True when cursor is the user's newest event id, by this worker's
        continuous knowledge: the poll may wait without reading."""
        if not (self._registered and self.hub.redis_ok):
            return False
        known = self.hub._known.get(self.user_id)
        return known is not None and known.head == cursor

    def head_version(self) -> int:
        """Taken before a read, handed back to saw_head after it."""
        known = self.hub._known.get(self.user_id)
        return known.version if known is not None else -1

    def saw_head(self, head: int, version: int) -> None:
        """A read (begun at head_version() == version) found this head."""
        known = self.hub._known.get(self.user_id)
        if (
            known is None
            or known.version != version
            or not (self._registered and self.hub.redis_ok)
        ):
            return
        if known.head is None or head > known.head:
            known.head = head
            known.advance()

    # -- the hub's side ------------------------------------------------------------

    def _wake(self, ephemeral: dict[str, Any] | None) -> None:
        if ephemeral is not None:
            if self._ephemeral is None:
                self._ephemeral = []
            self._ephemeral.append(ephemeral)
        else:
            self._stored_wake = True
        self._event.set()

    def _release(self, reason: str) -> None:
        self._released = reason
        self._event.set()


PollHook = Callable[[int], None]


class Hub:
    """Held polls of this worker, keyed by user id."""

    def __init__(
        self,
        *,
        max_polls_per_user: int = 8,
        clock: Callable[[], float] = time.monotonic,
        register: Callable[[int], bool] | None = None,
    ) -> None:
        self.clock = clock
        self.max_polls_per_user = max_polls_per_user
        # Records in Redis that this worker holds a user's polls; False when Redis
        # did not answer. The runtime connects Registry.ensure here.
        self.register: Callable[[int], bool] = register or (lambda user_id: True)
        # Called with the user id when a poll starts and when it ends (presence).
        # They run on the poll's path: they must not block; a raise is logged.
        self.on_poll_start: list[PollHook] = []
        self.on_poll_end: list[PollHook] = []
        # dict, not set: insertion order finds the oldest poll of a user.
        self._waiters: dict[int, dict[Waiter, None]] = {}
        # user id → what this worker knows of the user's stream, while it holds
        # the user's polls and for KNOWN_GRACE_SECS after; _idle: users without a
        # poll here, in the order their last one ended, with that time.
        self._known: dict[int, _Known] = {}
        self._idle: dict[int, float] = {}
        self._count = 0
        self.draining = False
        # False while the dispatcher cannot reach Redis: waiters then re-read the
        # database on a short interval instead of trusting wake-ups.
        self.redis_ok = True

    # -- polls -------------------------------------------------------------------

    @contextmanager
    def listen(
        self, user_id: int, sock: socket.socket | None = None, *, hold: bool = True
    ) -> Iterator[Waiter]:
        """One poll of user_id, from before its first read to its answer.

        Joins the hub (so a wake between the read and the wait still counts) and
        runs the poll-start hooks; when the poll may be held (`hold`), registers
        it in Redis and, given the client's socket, releases it as soon as the
        client hangs up. On every exit all of it is undone: the watch stops, the
        poll leaves the hub and the poll-end hooks run.
        """
        waiter = self.join(user_id)
        stop_watching: Callable[[], None] | None = None
        self._notify(self.on_poll_start, user_id)
        try:
            if hold:
                waiter._registered = self.register(user_id)
                if sock is not None:
                    stop_watching = watch_hangup(
                        sock, lambda: waiter._release(CLIENT_GONE)
                    )
            yield waiter
        finally:
            if stop_watching is not None:
                stop_watching()
            self.leave(waiter)
            self._notify(self.on_poll_end, user_id)

    def note_instant_poll(self, user_id: int) -> None:
        """A poll answered without joining (no cursor): its start and end hooks."""
        self._notify(self.on_poll_start, user_id)
        self._notify(self.on_poll_end, user_id)

    def join(self, user_id: int) -> Waiter:
        """Register a poll before it reads the database, so no wake is lost.

        Prefer listen(), which also leaves.
        """
        waiter = Waiter(self, user_id)
        if self.draining:
            waiter._release(SHUTDOWN)
            return waiter
        polls = self._waiters.get(user_id)
        if polls is None:
            polls = self._waiters[user_id] = {}
            self._expire_known()  # a user back after the grace starts afresh
            self._idle.pop(user_id, None)
            if user_id not in self._known:
                self._known[user_id] = _Known()
        while len(polls) >= self.max_polls_per_user:
            oldest = next(iter(polls))
            self._release(oldest, SUPERSEDED)
        polls[waiter] = None
        self._count += 1
        metrics.HELD_POLLS.inc()
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
            self._idle[waiter.user_id] = self.clock()
        self._expire_known()

    def _expire_known(self) -> None:
        """Forget users whose last poll here ended KNOWN_GRACE_SECS ago."""
        cutoff = self.clock() - KNOWN_GRACE_SECS
        while self._idle:
            user_id, since = next(iter(self._idle.items()))
            if since > cutoff:
                return
            del self._idle[user_id]
            self._known.pop(user_id, None)

    def _release(self, waiter: Waiter, reason: str) -> None:
        waiter._release(reason)
        self.leave(waiter)

    def _notify(self, hooks: list[PollHook], user_id: int) -> None:
        for hook in hooks:
            try:
                hook(user_id)
            except Exception:  # noqa: BLE001 - presence must never break a poll
                logger.exception("poll hook failed for user %s", user_id)

    # -- wake-ups ----------------------------------------------------------------

    def wake(self, user_id: int, ephemeral: dict[str, Any] | None = None) -> int:
        """Wake every poll of a user on this worker; returns how many.

        A stored event without its id (ephemeral None) makes the user's head
        unknown here: the woken polls read the database.
        """
        if ephemeral is None:
            known = self._known.get(user_id)
            if known is not None:
                known.forget_head()
        polls = self._waiters.get(user_id)
        if not polls:
            return 0
        for waiter in polls:
            waiter._wake(ephemeral)
        return len(polls)

    def deliver(self, user_id: int, event_id: int, delivery: Delivery) -> int:
        """A stored event of user_id, committed with this id: remember it (while
        the user is known here) and wake the user's polls; returns how many."""
        known = self._known.get(user_id)
        if known is not None:
            known.add(event_id, delivery.encoded(event_id))
        polls = self._waiters.get(user_id)
        if not polls:
            return 0
        for waiter in polls:
            waiter._wake(None)
        return len(polls)

    def forget_heads(self) -> None:
        """Every user's head is unknown (Redis trouble: wakes may have been lost)."""
        for known in self._known.values():
            known.forget_head()

    def wake_all(self) -> None:
        """Wake every poll (after a Redis outage: wake-ups may have been missed)."""
        self.forget_heads()
        for polls in list(self._waiters.values()):
            for waiter in polls:
                waiter._wake(None)

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

    def polls_of(self, user_id: int) -> int:
        """How many polls of user_id this worker holds."""
        return len(self._waiters.get(user_id, ()))

    def __len__(self) -> int:
        return self._count
