"""The per-process objects every layer shares: settings, shard router, Redis, hub.

A leaf: it imports no service and no worker. The composition root
(messenger/bootstrap.py) builds one Runtime per process (gunicorn: in each worker,
after the fork), connects its hooks and starts its background work. Services
reach it through `get()`, never through Flask.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent.pool
import redis

from messenger.blobs import BlobStore
from messenger.blobs import from_settings as blob_store
from messenger.realtime.connections import shared_client
from messenger.realtime.hub import Hub
from messenger.realtime.wakeups import Registry, Waker
from messenger.settings import Settings
from messenger.storage import green
from messenger.storage.events import OutboxRow
from messenger.storage.router import Router

logger = logging.getLogger(__name__)

# Called with the outbox rows that just reached every recipient's stream (push
# notifications); what they return is ignored, what they raise is logged.
AfterFanout = Callable[[list[OutboxRow]], object]

# Request fan-outs' parts on other databases run behind the answers, at most
# this many at a time per worker (services/fanout.start_fan_out); past it they
# wait in the outbox for the sweeper. Healthy, a part takes milliseconds, so a
# few are running at any time; a hung server holds each for up to the fan-out's
# remote timeout (5 s), and they must not gather without bound, each with its
# outbox rows in memory.
BACKGROUND_FANOUTS_MAX = 100


@dataclass
class Runtime:
    settings: Settings
    router: Router
    redis: redis.Redis
    worker_id: str
    hub: Hub
    registry: Registry
    waker: Waker
    blobs: BlobStore
    after_fanout: list[AfterFanout] = field(default_factory=list)
    background_fanouts: gevent.pool.Pool = field(
        default_factory=lambda: gevent.pool.Pool(BACKGROUND_FANOUTS_MAX)
    )

    def close(self) -> None:
        """Close the database pools and the Redis pool (background work is the
        composition root's to stop)."""
        self.router.close()
        # close() leaves a pool the client was given open: disconnect it too.
        self.redis.close()
        self.redis.connection_pool.disconnect()


_current: Runtime | None = None


def build(settings: Settings) -> Runtime:
    """This process's runtime, with no hooks connected and nothing started."""
    green.install()
    router = Router.from_settings(settings)
    if not settings.redis_url:
        raise ValueError("MESSENGER_REDIS_URL is required")
    client = shared_client(settings.redis_url, settings.redis_pool_size)
    node = settings.node_name or socket.gethostname()
    worker_id = f"{node}:{os.getpid()}:{secrets.token_hex(3)}"
    hub = Hub(max_polls_per_user=settings.max_polls_per_user)
    registry = Registry(client, worker_id, hub)
    # A held poll registers in Redis through its hub (Hub.listen).
    hub.register = registry.ensure
    waker = Waker(client, worker_id, hub)
    blobs = blob_store(settings)
    return Runtime(settings, router, client, worker_id, hub, registry, waker, blobs)


def install(runtime: Runtime) -> None:
    """Make `runtime` this process's current one (closing an earlier one)."""
    global _current
    if _current is not None and _current is not runtime:
        _current.close()
    _current = runtime


def get() -> Runtime:
    if _current is None:
        raise RuntimeError("messenger runtime not built: call create_app() first")
    return _current
