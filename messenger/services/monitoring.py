"""What /metrics needs beyond the counters: who may read it, gauges read at scrape."""

from __future__ import annotations

import hmac
import logging

import redis

from messenger import metrics, runtime
from messenger.realtime import keys
from messenger.services import accounts

logger = logging.getLogger(__name__)


def authorize_scrape(token: str) -> None:
    """Allow the operator's metrics token or any user's bearer token.

    Raises:
        Unauthorized: neither.
    """
    expected = runtime.get().settings.metrics_token
    # compare_digest: the time taken does not tell how much of the token matched.
    if expected and hmac.compare_digest(
        token.encode("utf-8", "surrogatepass"), expected.encode()
    ):
        return
    accounts.authenticate(token)


def refresh_gauges() -> None:
    """Read the gauges that live in Redis (push queue depth) before a scrape."""
    try:
        depth = runtime.get().redis.llen(keys.PUSH_QUEUE)
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="metrics").inc()
        logger.debug("push queue depth unknown: %s", exc)
        return
    metrics.PUSH_QUEUE_DEPTH.set(depth)
