"""Finish fan-outs a crash left undone, and trim events past retention.

Every gunicorn worker runs the sweep loop in a greenlet; they don't step on each
other because a fan-out locks its conversation and deletes its outbox rows, so a
second sweeper finds nothing to do. `messenger sweep` runs one pass by hand.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import gevent.event

from messenger import metrics
from messenger.errors import Unavailable
from messenger.runtime import Runtime
from messenger.services import fanout
from messenger.storage import events as event_store
from messenger.storage.shards import schema_name

logger = logging.getLogger(__name__)

# Outbox rows younger than this are still being fanned out by their request.
SWEEP_AFTER_SECS = 3.0
TRIM_EVERY_SECS = 3600.0
# Only one worker per database trims at a time.
_TRIM_LOCK_KEY = 7_302_115_002


def sweep_once(rt: Runtime, older_than_secs: float = SWEEP_AFTER_SECS) -> int:
    """Fan out every outbox row older than the given age; returns rows finished."""
    router = rt.router
    finished = 0
    backlog = 0  # over every database: one gauge, not the last database's count
    for dsn, shards in router.shard_map.shards_by_dsn().items():
        try:
            with router.on_dsn(dsn, "sweep_scan", transaction=False) as cur:
                stale = event_store.stale_outbox_across(
                    cur, [schema_name(s) for s in shards], older_than_secs
                )
        except Unavailable:
            logger.warning("sweeper: database unavailable; will retry")
            continue
        backlog += len(stale)
        metrics.OUTBOX_BACKLOG.set(backlog)
        now = datetime.now(UTC)
        for conversation_id, oldest in stale:
            try:
                done = fanout.fan_out(conversation_id)
            except Unavailable:
                logger.warning(
                    "sweeper: conversation %s: database unavailable", conversation_id
                )
                continue
            if done:
                finished += done
                metrics.FANOUT_LAG_SECONDS.observe((now - oldest).total_seconds())
                logger.info(
                    "sweeper: finished %d outbox rows of conversation %s",
                    done,
                    conversation_id,
                )
    return finished


def trim_once(rt: Runtime, retention_days: int | None = None) -> int:
    """Delete events older than the retention window; returns users touched."""
    router = rt.router
    days = (
        retention_days
        if retention_days is not None
        else rt.settings.event_retention_days
    )
    cutoff = datetime.now(UTC) - timedelta(days=days)
    touched = 0
    for dsn, shards in router.shard_map.shards_by_dsn().items():
        with router.on_dsn(dsn, "trim_events") as cur:
            if not event_store.try_lock(cur, _TRIM_LOCK_KEY):
                continue
            for shard in shards:
                cur.schema = schema_name(shard)
                touched += event_store.trim(cur, cutoff)
    return touched


@dataclass(frozen=True)
class Chore:
    """Work the sweep loop also runs, about every `every_secs` (the first run
    comes at a random moment within that, so workers started together spread
    out). The composition root (bootstrap.py) gives the loop its chores."""

    name: str
    every_secs: float
    run: Callable[[Runtime], object]


class SweepLoop:
    """This worker's sweep (every `sweeper_interval_secs`, jittered), trim (about
    hourly) and chores until stopped."""

    def __init__(self, rt: Runtime, chores: Sequence[Chore] = ()) -> None:
        self.rt = rt
        self.chores = list(chores)
        self._stopping = gevent.event.Event()

    def run(self) -> None:
        next_trim = time.monotonic() + random.uniform(60, 600)
        due = {
            chore.name: time.monotonic() + random.uniform(0.1, 1.0) * chore.every_secs
            for chore in self.chores
        }
        while not self._stopping.wait(
            self.rt.settings.sweeper_interval_secs * random.uniform(0.75, 1.25)
        ):
            try:
                sweep_once(self.rt)
                if time.monotonic() >= next_trim:
                    next_trim = time.monotonic() + TRIM_EVERY_SECS
                    trim_once(self.rt)
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                logger.exception("sweeper pass failed")
            for chore in self.chores:
                if time.monotonic() < due[chore.name]:
                    continue
                due[chore.name] = time.monotonic() + chore.every_secs
                try:
                    chore.run(self.rt)
                except Exception:  # noqa: BLE001 - as above
                    logger.exception("sweeper chore %s failed", chore.name)

    def stop(self) -> None:
        """End run() after the pass under way, if any."""
        self._stopping.set()
