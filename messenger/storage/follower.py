"""Each routing process follows the directory's shard map.

A MapFollower is a greenlet (started by bootstrap.start) that reads the epoch a
few times a second and, when it moved, loads the map into its router and
records the epoch it now routes by in `shard_map_followers` (what `messenger
move-shard` waits on before it fences a shard).
"""

from __future__ import annotations

import logging
import time

import gevent.event
import psycopg2

from messenger.errors import Unavailable
from messenger.settings import ConfigError
from messenger.storage.router import Router
from messenger.storage.shardmap import (
    FOLLOW_INTERVAL_SECS,
    HEARTBEAT_SECS,
    forget_follower,
    load_stored,
    note_follower,
    read_epoch,
)

logger = logging.getLogger(__name__)


class MapFollower:
    """Keeps a router on the directory's current map (one greenlet per process).

    A directory that does not answer is logged and retried; the router keeps
    the last map it had (a stale writer to a moved shard meets the fence).
    """

    def __init__(self, router: Router, worker_id: str) -> None:
        self.router = router
        self.worker_id = worker_id
        self._stop = gevent.event.Event()
        self._noted_at = 0.0
        self._noted_epoch = -1

    def check_once(self) -> bool:
        """Load the map if its epoch moved; True if it did."""
        changed = False
        # A plain cursor: the follower's statements are no request's.
        pool = self.router.pool(self.router.shard_map.directory_dsn)
        with pool.connection() as conn, conn.cursor() as cur:
            epoch = read_epoch(cur)
            if epoch is not None and epoch != self.router.shard_map.epoch:
                stored = load_stored(cur)
                if stored is not None:
                    self.router.use_map(self.router.resolve(stored))
                    changed = True
            current = self.router.shard_map.epoch
            now = time.monotonic()
            if current != self._noted_epoch or now - self._noted_at > HEARTBEAT_SECS:
                note_follower(cur, self.worker_id, current)
                self._noted_epoch, self._noted_at = current, now
        if changed:
            logger.info(
                "shard map: now at epoch %s (frozen: %s)",
                self.router.shard_map.epoch,
                sorted(self.router.shard_map.frozen) or "none",
            )
        return changed

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except (Unavailable, psycopg2.Error, ConfigError) as exc:
                logger.warning("shard map: cannot follow the directory: %s", exc)
            self._stop.wait(FOLLOW_INTERVAL_SECS)

    def stop(self) -> None:
        self._stop.set()
        forget(self.router, self.worker_id)


def forget(router: Router, worker_id: str) -> None:
    """Take a worker out of the followers a shard move waits for (it stops);
    a directory that does not answer leaves its row to go stale."""
    try:
        with router.directory("map_unfollow") as cur:
            forget_follower(cur, worker_id)
    except (Unavailable, psycopg2.Error):
        pass
