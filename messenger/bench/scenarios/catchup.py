"""catchup: an offline user drains a backlog with timeout=0 pages; events/s."""

from __future__ import annotations

import math
import time
from typing import Any

import gevent

from messenger.bench.client import Connection, User, events_path, run_bounded
from messenger.bench.scenarios.harness import (
    SETUP_CONCURRENCY,
    Bench,
    ScenarioError,
    seed_messages,
)
from messenger.bench.stats import distribution

EVENTS_PAGE_MAX = 500


def drain(
    bench: Bench,
    user: User,
    cursor: str,
    expected: int,
    conn: Connection,
    wait_secs: float = 0.0,
    retries: int | None = None,
) -> tuple[int, int, list[float]]:
    """Read user's events after cursor in pages until expected ones came.

    With wait_secs, an empty page is retried until then (fan-out still running).
    Returns (events, pages, page latencies in ms).
    """
    count, pages, page_ms = 0, 0, []
    deadline = time.monotonic() + wait_secs
    while count < expected:
        t0 = time.perf_counter()
        answer = bench.api.call(
            "GET",
            events_path(cursor, 0, EVENTS_PAGE_MAX),
            token=user.token,
            conn=conn,
            retries=retries,
        )
        page_ms.append((time.perf_counter() - t0) * 1000)
        pages += 1
        count += len(answer["events"])
        cursor = answer["cursor"]
        if not answer["events"]:
            if time.monotonic() >= deadline:
                break
            gevent.sleep(0.2)
    return count, pages, page_ms


def run_catchup(bench: Bench) -> dict[str, Any]:
    """An offline user with a backlog drains it with timeout=0 pages: events/s."""
    plan = bench.plan
    senders = bench.ensure_users(plan.catchup_senders)
    bench.server(workers=2)
    target = bench.extra_user("catchup")
    conversation_ids = run_bounded(
        senders, lambda s: bench.api.direct(s, target), SETUP_CONCURRENCY
    )
    start_cursor = bench.api.head_cursor(target)
    per_sender = math.ceil(plan.catchup_events / len(senders))
    backlog = per_sender * len(senders)
    seed_rate = seed_messages(
        bench, "catchup", list(zip(senders, conversation_ids, strict=True)), per_sender
    )
    conn = Connection(bench.stack.port, timeout_secs=60)
    # A first pass proves the backlog is complete (fan-out may trail the 201s) ...
    t0 = time.monotonic()
    first_count, _, _ = drain(bench, target, start_cursor, backlog, conn, wait_secs=30)
    first_rate = first_count / max(time.monotonic() - t0, 1e-6)
    if first_count < backlog:
        raise ScenarioError(f"only {first_count:,} of {backlog:,} events arrived")
    # ... then the timed pass drains it again from the same cursor, as one client.
    result: dict[str, Any] = {
        "backlog": backlog,
        "seed_per_sec": seed_rate,
        "first_pass_events_per_sec": round(first_rate, 1),
    }
    t0 = time.monotonic()
    with bench.measured(result), bench.profiler.record("catchup"):
        count, pages, page_ms = drain(
            bench, target, start_cursor, backlog, conn, retries=0
        )
    elapsed = time.monotonic() - t0
    conn.close()
    result.update(
        drained=count,
        pages=pages,
        elapsed_secs=round(elapsed, 3),
        events_per_sec=round(count / max(elapsed, 1e-6), 1),
        page_ms=distribution(page_ms),
    )
    bench.say(
        f"[catchup] drained {count:,} events in {elapsed:.2f} s "
        f"({result['events_per_sec']:,.0f}/s)"
    )
    return result
