"""The per-process objects every layer shares: settings, shard router, Redis, hub.

`create_app` builds one Runtime per process (gunicorn builds it in each worker
after the fork). Services reach it through `get()`, never through Flask.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass

import redis

from messenger.realtime.connections import shared_client
from messenger.realtime.dispatcher import Dispatcher
from messenger.realtime.hub import Hub
from messenger.realtime.wakeups import Registry, Waker
from messenger.settings import Settings
from messenger.storage import green
from messenger.storage.router import Router

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    router: Router
    redis: redis.Redis
    worker_id: str
    hub: Hub
    registry: Registry
    waker: Waker
    dispatcher: Dispatcher | None = None
    started: bool = False

    def start_background(self) -> None:
        """Start this worker's dispatcher, sweeper and presence greenlets (once)."""
        if self.started:
            return
        self.started = True
        self.dispatcher = Dispatcher(
            self.settings.redis_url or "", self.worker_id, self.hub, self.registry
        )
        self.dispatcher.start()
        from messenger.workers import sweeper

        sweeper.start_in_background(self)
        from messenger.services import presence

        presence.start_in_background(self)

    def close(self) -> None:
        if self.dispatcher:
            self.dispatcher.stop()
        self.router.close()
        self.redis.close()


_current: Runtime | None = None


def build(settings: Settings) -> Runtime:
    green.install()
    router = Router.from_settings(settings)
    if not settings.redis_url:
        raise ValueError("MESSENGER_REDIS_URL is required")
    client = shared_client(settings.redis_url, settings.redis_pool_size)
    worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    hub = Hub(max_polls_per_user=settings.max_polls_per_user)
    registry = Registry(client, worker_id, hub)
    waker = Waker(client, worker_id, hub)
    return Runtime(settings, router, client, worker_id, hub, registry, waker)


def install(runtime: Runtime) -> None:
    global _current
    if _current is not None and _current is not runtime:
        _current.close()
    _current = runtime


def get() -> Runtime:
    if _current is None:
        raise RuntimeError("messenger runtime not built: call create_app() first")
    return _current
