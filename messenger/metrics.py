"""Prometheus metrics, named in one place.

Under gunicorn, set PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py does) so /metrics
adds up every worker.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

REQUESTS = Counter(
    "messenger_requests_total", "HTTP requests answered.", ["route", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "messenger_request_seconds",
    "Time to answer an HTTP request (long polls included).",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
HELD_POLLS = Gauge(
    "messenger_held_polls", "Long polls held right now.", multiprocess_mode="livesum"
)
WAKES_SENT = Counter(
    "messenger_wakes_sent_total", "User wake-ups pushed to workers' Redis lists."
)
WAKES_RECEIVED = Counter(
    "messenger_wakes_received_total", "User wake-ups this worker's dispatcher popped."
)
FANOUT_SECONDS = Histogram(
    "messenger_fanout_seconds",
    "From message commit to every member's event stored.",
    buckets=_LATENCY_BUCKETS,
)
FANOUT_LAG_SECONDS = Histogram(
    "messenger_fanout_lag_seconds",
    "Age of outbox rows when the sweeper finished them.",
    buckets=_LATENCY_BUCKETS,
)
FANOUTS_LEFT_TO_SWEEPER = Counter(
    "messenger_fanouts_left_to_sweeper_total",
    "Request fan-outs whose part on other databases was left in the outbox for "
    "the sweeper: the worker's background fan-outs were at their cap.",
)
OUTBOX_BACKLOG = Gauge(
    "messenger_outbox_backlog",
    "Outbox rows older than the sweep delay at the last sweep.",
    multiprocess_mode="max",
)
DB_TRANSACTION_SECONDS = Histogram(
    "messenger_db_transaction_seconds",
    "Named database transactions.",
    ["name"],
    buckets=_LATENCY_BUCKETS,
)
DB_POOL_WAIT = Histogram(
    "messenger_db_pool_wait_seconds",
    "Time waiting for a pooled database connection.",
    buckets=_LATENCY_BUCKETS,
)
DB_POOL_TIMEOUTS = Counter(
    "messenger_db_pool_timeouts_total",
    "Checkouts that gave up (answered 503).",
    ["database"],
)
DB_ERRORS = Counter(
    "messenger_db_errors_total", "Database connection failures.", ["database"]
)
REDIS_ERRORS = Counter(
    "messenger_redis_errors_total", "Redis commands that failed.", ["op"]
)
PUSH_QUEUE_DEPTH = Gauge(
    "messenger_push_queue_depth",
    "Push jobs waiting in Redis at the last look.",
    multiprocess_mode="max",
)
PUSH_ENQUEUED = Counter(
    "messenger_push_enqueued_total",
    "Messages queued for a push to an offline member (before coalescing).",
)
PUSH_DELIVERIES = Counter(
    "messenger_push_deliveries_total",
    "Push attempts by outcome: delivered, gone, retry, dead, no_device, deferred "
    "(a user or host at its cap), dropped (queue or user share full), unwanted "
    "(muted, or every sender blocked, at delivery).",
    ["outcome"],
)
RATE_LIMITED = Counter(
    "messenger_rate_limited_total", "Requests refused with 429.", ["limit"]
)
TOKEN_CACHE = Counter(
    "messenger_token_cache_total",
    "Bearer-token checks by outcome: hit (no I/O) or miss (the user's shard).",
    ["outcome"],
)


def exposition(multiprocess_dir: str | None) -> tuple[bytes, str]:
    """The text format of every metric: of all gunicorn workers when their files
    are in `multiprocess_dir`, else of this process."""
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        REGISTRY,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    if not multiprocess_dir:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
    return generate_latest(registry), CONTENT_TYPE_LATEST


# Any token is a method to the HTTP parser: an unauthenticated client sending
# "GET1", "GET2", ... would add a labelled series per request, without bound.
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)


# (route, method, status) → its counter and its route's histogram: labels() takes a
# lock and builds a key on every call, which the poll path paid twice per answer.
_REQUEST_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def count_request(route: str, method: str, status: int, duration_secs: float) -> None:
    """messenger_requests_total and messenger_request_seconds for one answer."""
    key = (route, method, status)
    children = _REQUEST_CHILDREN.get(key)
    if children is None:
        children = _REQUEST_CHILDREN[key] = (
            REQUESTS.labels(route=route, method=method, status=str(status)),
            REQUEST_SECONDS.labels(route=route),
        )
    children[0].inc()
    children[1].observe(duration_secs)


_TOKEN_CHECK_CHILDREN: dict[bool, Any] = {}


def count_token_check(*, is_hit: bool) -> None:
    """messenger_token_cache_total: one bearer-token check (every poll makes one)."""
    child = _TOKEN_CHECK_CHILDREN.get(is_hit)
    if child is None:
        child = _TOKEN_CHECK_CHILDREN[is_hit] = TOKEN_CACHE.labels(
            outcome="hit" if is_hit else "miss"
        )
    child.inc()


def method_label(method: str) -> str:
    """The HTTP method as a metrics label: a standard method, else "other"."""
    return method if method in _KNOWN_METHODS else "other"
