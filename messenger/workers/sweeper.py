"""Finish fan-outs a crash or a database outage left undone, and trim events.

Every gunicorn worker runs the sweep loop in a greenlet, but each database is
swept by one worker at a time: the holder of its Redis lease (`sweep:lease:…`,
renewed every pass, taken over by another worker when it lapses). Without
Redis every worker sweeps every database, as before: redundant, not wrong,
because a fan-out locks its conversation and records what it delivered.
`messenger sweep` runs one pass by hand, over every database.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import gevent
import gevent.event
import redis

from messenger import metrics
from messenger.errors import Unavailable
from messenger.realtime import keys
from messenger.runtime import Runtime
from messenger.services import fanout
from messenger.storage import events as event_store
from messenger.storage.shards import schema_name

logger = logging.getLogger(__name__)

# Outbox rows younger than this are still being fanned out by their request.
SWEEP_AFTER_SECS = 3.0
TRIM_EVERY_SECS = 3600.0
# A trim batch: at most this many events in one short transaction.
TRIM_BATCH_ROWS = 5_000
# Bounds of one trim pass (the next pass, an hour later, goes on).
TRIM_MAX_BATCHES_PER_SHARD = 10_000
TRIM_BUDGET_SECS = 600.0
# Only one worker per database trims at a time (a lock per batch transaction).
_TRIM_LOCK_KEY = 7_302_115_002


# A sweep lease outlives this many sweep intervals (at least LEASE_MIN_SECS), so
# a holder that died is replaced that long after its last pass.
LEASE_INTERVALS = 5
LEASE_MIN_SECS = 10.0


def hold_lease(client: redis.Redis, key: str, owner: str, ttl_secs: float) -> bool:
    """Take or renew a lease; False while another owner holds it.

    Redis unreachable: True (every worker sweeps; fan-outs are idempotent).
    """
    ttl_ms = max(1, int(ttl_secs * 1000))
    try:
        if client.set(key, owner, nx=True, px=ttl_ms):
            return True
        if client.get(key) != owner.encode():
            return False
        client.pexpire(key, ttl_ms)
        return True
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="sweep_lease").inc()
        logger.debug("sweeper: lease %s unknown (%s); sweeping", key, exc)
        return True


def sweep_once(
    rt: Runtime,
    older_than_secs: float = SWEEP_AFTER_SECS,
    *,
    lease_owner: str | None = None,
) -> int:
    """Fan out every outbox row older than the given age; returns rows finished.

    With a lease_owner, only the databases whose sweep lease it holds (or
    takes) are swept; without, every database.
    """
    router = rt.router
    finished = 0
    backlog = 0  # over every database: one gauge, not the last database's count
    lease_secs = max(
        LEASE_MIN_SECS, LEASE_INTERVALS * rt.settings.sweeper_interval_secs
    )
    for dsn, shards in router.shard_map.shards_by_dsn().items():
        if lease_owner is not None and not hold_lease(
            rt.redis, keys.sweep_lease(router.pools[dsn].label), lease_owner, lease_secs
        ):
            continue
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


def trim_once(
    rt: Runtime,
    retention_days: int | None = None,
    *,
    batch_rows: int = TRIM_BATCH_ROWS,
    time_budget_secs: float = TRIM_BUDGET_SECS,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Delete events older than the retention window, in short batches; returns
    the users touched (a user trimmed in two batches counts twice).

    Each batch is its own transaction and locks its users in the fan-out's
    order; a database whose trim another worker is running is skipped. Stops
    after `time_budget_secs` (the next pass goes on where this one stopped).
    `progress`, if given, hears about each shard done (the CLI prints it).
    """
    router = rt.router
    days = (
        retention_days
        if retention_days is not None
        else rt.settings.event_retention_days
    )
    cutoff = datetime.now(UTC) - timedelta(days=days)
    deadline = time.monotonic() + time_budget_secs
    touched = deleted = 0
    for dsn, shards in router.shard_map.shards_by_dsn().items():
        for shard in shards:
            try:
                for _ in range(TRIM_MAX_BATCHES_PER_SHARD):
                    if time.monotonic() > deadline:
                        logger.warning(
                            "trim: stopped after %.0f s (%d events deleted); the "
                            "next pass goes on",
                            time_budget_secs,
                            deleted,
                        )
                        return touched
                    with router.on_dsn(dsn, "trim_events") as cur:
                        if not event_store.try_lock(cur, _TRIM_LOCK_KEY):
                            break  # another worker trims this database now
                        cur.schema = schema_name(shard)
                        batch = event_store.trim_batch(cur, cutoff, batch_rows)
                    touched += batch.users_touched
                    deleted += batch.events_deleted
                    if batch.events_deleted < batch_rows:
                        break
                    gevent.sleep(0)  # let requests in between batches
            except Unavailable as exc:
                # One server down must not stop the others' trim (the next
                # pass does its share); committed batches stay done.
                logger.warning(
                    "trim: %s skipped (%s); the next pass goes on",
                    router.pools[dsn].label,
                    exc.message,
                )
                if progress is not None:
                    progress(f"trim: {router.pools[dsn].label} unavailable, skipped")
                break
            if progress is not None:
                progress(
                    f"trim: shard {shard} done ({deleted} events of {touched} "
                    "users so far)"
                )
    if deleted:
        logger.info("trim: %d events of %d users deleted", deleted, touched)
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
                sweep_once(self.rt, lease_owner=self.rt.worker_id)
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
