"""wake: held polls of distinct users, messages to random ones; send-to-answer
latency."""

from __future__ import annotations

import time
from typing import Any

import gevent
import gevent.pool

from messenger.bench.client import ApiFailure, TransportError, run_bounded
from messenger.bench.scenarios.harness import (
    BODY,
    SETUP_CONCURRENCY,
    Bench,
    PollStats,
    ScenarioError,
    cpu_us_per,
    cursors_for,
    message_ids,
    open_and_settle,
    poll_loop,
    ticker,
    wait_until,
)
from messenger.bench.stats import distribution


def run_wake(bench: Bench) -> dict[str, Any]:
    """Held polls of distinct users; messages to random ones; send-to-answer latency."""
    plan = bench.plan
    users = bench.ensure_users(plan.wake_users)
    bench.server(workers=2)
    sender = bench.extra_user("wake")
    conversation_ids = run_bounded(
        users, lambda u: bench.api.direct(sender, u), SETUP_CONCURRENCY
    )
    cursors = cursors_for(bench, users)
    started: dict[str, float] = {}  # client_msg_id → just before its POST
    latencies_ms: list[float] = []
    send_ms: list[float] = []
    counts = {"sent": 0, "send_errors": 0}
    last_send_error: list[str] = []

    def on_events(arrived: float, events: list[dict[str, Any]]) -> None:
        for client_msg_id in message_ids(events):
            t0 = started.pop(client_msg_id, None)
            if t0 is not None:
                latencies_ms.append((arrived - t0) * 1000)

    stats = PollStats()
    bench.is_server_dirty = True
    pollers = [
        gevent.spawn(poll_loop, bench.stack.port, user, cursor, stats, on_events)
        for user, cursor in zip(users, cursors, strict=True)
    ]
    result: dict[str, Any] = {
        "users": len(users),
        "rate_per_sec": plan.wake_rate_per_sec,
        "duration_secs": plan.wake_secs,
    }
    try:
        result["settling"] = open_and_settle(stats, len(users))
        errors_at_start = stats.errors
        total = int(plan.wake_rate_per_sec * plan.wake_secs)
        senders = gevent.pool.Pool(100)

        def send_one(k: int) -> None:
            index = bench.rng.randrange(len(users))
            client_msg_id = f"wake-{bench.run_tag}-{k}"
            t0 = time.perf_counter()
            started[client_msg_id] = t0
            try:
                bench.api.send(
                    sender, conversation_ids[index], client_msg_id, BODY, retries=0
                )
            except (ApiFailure, TransportError) as exc:
                counts["send_errors"] += 1
                last_send_error[:] = [str(exc)]
                started.pop(client_msg_id, None)
                return
            send_ms.append((time.perf_counter() - t0) * 1000)
            counts["sent"] += 1

        t_start = time.monotonic()
        answers_before, sent_before = stats.answers, counts["sent"]

        def progress() -> str:
            return (
                f"[wake] {time.monotonic() - t_start:.0f}/{plan.wake_secs:.0f} s, "
                f"{counts['sent']:,} sent, {len(latencies_ms):,} delivered"
            )

        with (
            bench.measured(result),
            bench.profiler.record("wake"),
            ticker(bench.say, progress),
        ):
            for k in range(total):
                delay = t_start + k / plan.wake_rate_per_sec - time.monotonic()
                if delay > 0:
                    gevent.sleep(delay)
                senders.spawn(send_one, k)
            # Past wake_secs when the server was too slow for the rate (100 sends
            # at most in flight): the achieved rate says so.
            schedule_secs = time.monotonic() - t_start
            senders.join(timeout=30)
            wait_until(lambda: not started, plan.drain_timeout_secs)
        answered = stats.answers - answers_before
        result.update(
            polls_answered=answered,
            sends_measured=counts["sent"] - sent_before,
            # Each delivery here is one send, one answer and its re-poll.
            worker_cpu_us_per_delivery=cpu_us_per(result["cpu"], answered),
        )
    finally:
        gevent.killall(pollers, timeout=10)
    if not latencies_ms:
        raise ScenarioError(
            f"no message reached a held poll ({counts}, "
            f"poll error: {stats.last_error}, "
            f"send error: {last_send_error})"
        )
    result.update(
        sent=counts["sent"],
        achieved_rate_per_sec=round(total / max(schedule_secs, plan.wake_secs), 1),
        delivered=len(latencies_ms),
        lost=counts["sent"] - len(latencies_ms),
        send_errors=counts["send_errors"],
        poll_errors=stats.errors - errors_at_start,
        early_answers=stats.early_answers,
        last_error=last_send_error[0] if last_send_error else stats.last_error,
        latency_ms=distribution(latencies_ms),
        send_latency_ms=distribution(send_ms),
    )
    return result
