"""What every worker must forget at once, broadcast through Redis pub/sub:
revoked tokens, and users whose "who blocked me" changed.

A worker that revokes a session PUBLISHes the token's digest; each worker's
listener greenlet hands it to its token cache (services/sessions.py), which
drops it, so "revoked at once" holds on every worker within a Redis round trip.
A block or unblock publishes the blocked user's id the same way, for the cache
of blockers the send path reads (services/blocks.py).

A message published while a listener is cut off from Redis is lost to it, so a
listener reports whether it is subscribed (`listening`): the cache serves only
while it is, and it is emptied each time the subscription is (re)made.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

import gevent
import redis

from messenger import metrics
from messenger.backoff import Backoff
from messenger.realtime import keys
from messenger.realtime.connections import blocking_client

logger = logging.getLogger(__name__)

# How long one wait for a message lasts: a stopping worker notices this fast.
LISTEN_BLOCK_SECS = 1.0
BACKOFF_MAX_SECS = 5.0
# A silently cut connection delivers nothing and raises nothing: the listener
# pings this often and gives the connection up when no pong came back within
# PONG_TIMEOUT_SECS, so the cache stops serving within that time.
PING_EVERY_SECS = 3.0
PONG_TIMEOUT_SECS = 3.0


def publish(
    client: redis.Redis,
    digests: Iterable[bytes] = (),
    blocked_user_ids: Iterable[int] = (),
) -> None:
    """Tell every worker these token digests are revoked and these users'
    blockers changed.

    Raises:
        redis.RedisError: Redis did not answer (the caller logs it).
    """
    message = {
        "tokens": [d.hex() for d in digests],
        "blocked": [int(u) for u in blocked_user_ids],
    }
    if message["tokens"] or message["blocked"]:
        client.publish(keys.SESSIONS_REVOKED_CHANNEL, json.dumps(message))


def decode(raw: bytes | str) -> tuple[list[bytes], list[int]]:
    """The token digests and user ids of one message; ValueError when it is
    malformed."""
    message = json.loads(raw)
    if not isinstance(message, dict):
        raise ValueError("not an object")
    tokens = [bytes.fromhex(str(item)) for item in message.get("tokens", [])]
    users = [int(item) for item in message.get("blocked", [])]
    return tokens, users


class RevocationListener:
    """One greenlet per worker subscribed to the revocation channel."""

    def __init__(
        self,
        redis_url: str,
        on_revoked: Callable[[list[bytes]], None],
        on_blocks_changed: Callable[[list[int]], None],
        on_reset: Callable[[], None],
        *,
        client_factory: Callable[[], redis.Redis] | None = None,
    ) -> None:
        self.on_revoked = on_revoked
        self.on_blocks_changed = on_blocks_changed
        self.on_reset = on_reset
        self._client_factory = client_factory or (
            lambda: blocking_client(redis_url, LISTEN_BLOCK_SECS)
        )
        self.listening = False
        self._stopping = False
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        self._stopping = True
        self.listening = False
        if self._greenlet is not None:
            self._greenlet.kill(timeout=2)

    def _run(self) -> None:
        retry = Backoff(0.1, BACKOFF_MAX_SECS, jitter=(0.5, 1.5))
        while not self._stopping:
            client = self._client_factory()
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(keys.SESSIONS_REVOKED_CHANNEL)
                # Wait for the confirmation: only then is nothing published
                # from here on missed.
                confirmed = pubsub.get_message(timeout=LISTEN_BLOCK_SECS)
                if not confirmed or confirmed.get("type") != "subscribe":
                    raise redis.ConnectionError("no subscribe confirmation")
                # Anything revoked while not listening may still be cached.
                self.on_reset()
                self.listening = True
                retry.reset()
                pinged_at = last_pong = time.monotonic()
                while not self._stopping:
                    now = time.monotonic()
                    if now - pinged_at >= PING_EVERY_SECS:
                        pubsub.ping()
                        pinged_at = now
                    if pinged_at - last_pong > PING_EVERY_SECS + PONG_TIMEOUT_SECS:
                        raise redis.TimeoutError("no pong from Redis")
                    message = pubsub.get_message(timeout=LISTEN_BLOCK_SECS)
                    if message is None:
                        continue
                    if message.get("type") == "pong":
                        last_pong = time.monotonic()
                    elif message.get("type") == "message":
                        self._deliver(message["data"])
            except redis.RedisError as exc:
                metrics.REDIS_ERRORS.labels(op="revocations").inc()
                if self.listening:
                    logger.warning(
                        "revocations: Redis unreachable (%s); tokens are checked "
                        "in the database until it returns",
                        exc,
                    )
                self.listening = False
                self.on_reset()
                gevent.sleep(retry.failed())
            finally:
                self.listening = self.listening and not self._stopping
                try:
                    pubsub.close()
                finally:
                    client.connection_pool.disconnect()

    def _deliver(self, raw: bytes | str) -> None:
        try:
            digests, user_ids = decode(raw)
        except (ValueError, TypeError):
            logger.warning("revocations: dropped a malformed message")
            return
        if digests:
            self.on_revoked(digests)
        if user_ids:
            self.on_blocks_changed(user_ids)
