"""idle: hold N polls on one worker; RSS per held poll, CPU while holding, errors."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import gevent

from messenger.bench import procs
from messenger.bench.client import events_path, run_bounded
from messenger.bench.scenarios.harness import (
    SETUP_CONCURRENCY,
    Bench,
    PollStats,
    ScenarioError,
    cursors_for,
    holds_at_least,
    ignore_events,
    poll_loop,
    ticker,
    wait_until,
)

# Points of the RSS-against-held-polls chart while polls are being opened.
RAMP_SAMPLES = 40


def run_idle(bench: Bench) -> dict[str, Any]:
    """Hold N polls on one worker: RSS per held poll, CPU while holding, errors."""
    plan = bench.plan
    users = bench.ensure_users(plan.users_needed(["idle"]))
    bench.server(workers=1)
    worker_pids = bench.stack.worker_pids()
    if len(worker_pids) != 1:
        raise ScenarioError(f"expected one gunicorn worker, found {worker_pids}")
    worker = worker_pids[0]
    port = bench.stack.port
    bench.is_server_dirty = True
    cursors = cursors_for(bench, users)  # also warms the worker up
    for _ in range(3):
        run_bounded(
            list(range(min(200, len(users)))),
            lambda i: bench.api.call(
                "GET", events_path(cursors[i], 0), token=users[i].token
            ),
            SETUP_CONCURRENCY,
        )
    gevent.sleep(1.0)
    baseline_kb = procs.rss_kb(worker) or 0
    stats = PollStats()
    result: dict[str, Any] = {
        "workers": 1,
        "users": len(users),
        "polls_per_user_max": plan.idle_polls_per_user,
        "baseline_rss_kb": baseline_kb,
        "levels": [],
        "ramp_per_sec": plan.idle_ramp_per_sec,
        "ramp": [[0, baseline_kb]],
    }
    greenlets: list[gevent.Greenlet] = []
    sample_every = max(10, max(plan.idle_levels) // RAMP_SAMPLES)

    def open_poll() -> None:
        index = len(greenlets)
        user_index = index % len(users)
        greenlets.append(
            gevent.spawn(
                poll_loop,
                port,
                users[user_index],
                cursors[user_index],
                stats,
                ignore_events,
            )
        )
        if len(greenlets) % sample_every == 0:
            result["ramp"].append([stats.in_flight, procs.rss_kb(worker) or 0])

    try:
        for level in plan.idle_levels:
            t0 = time.monotonic()
            opened_before, errors_before = len(greenlets), stats.errors
            with ticker(
                bench.say,
                lambda: (
                    f"[idle] opening polls: "
                    f"{stats.in_flight:,} held, {stats.errors} errors"
                ),
            ):
                # Paced, as a population of clients arrives; not all in one instant.
                while len(greenlets) < level:
                    elapsed = time.monotonic() - t0
                    due = opened_before + int(elapsed * plan.idle_ramp_per_sec) + 1
                    while len(greenlets) < min(level, due):
                        open_poll()
                    gevent.sleep(0.01)
                wait_until(partial(holds_at_least, stats, level), 30)
            gevent.sleep(plan.idle_settle_secs)
            bench.stack.check_alive()
            errors_opening = stats.errors - errors_before
            bench.say(
                f"[idle] {stats.in_flight:,}/{level:,} polls held after "
                f"{time.monotonic() - t0:.1f} s ({errors_opening} errors); "
                f"measuring for {plan.idle_cpu_window_secs:.0f} s"
            )
            errors_before, answers_before = stats.errors, stats.answers
            entry: dict[str, Any] = {"polls": level}
            with bench.measured(entry), bench.profiler.record(f"idle-{level}"):
                gevent.sleep(plan.idle_cpu_window_secs)
            rss = procs.rss_kb(worker) or 0
            result["ramp"].append([stats.in_flight, rss])
            entry.update(
                {
                    "held": stats.in_flight,
                    "rss_kb": rss,
                    "rss_per_poll_kb": round((rss - baseline_kb) / level, 2),
                    "server_cpu_pct": entry["cpu"]["server"],
                    "errors_opening": errors_opening,
                    "errors_holding": stats.errors - errors_before,
                    # Polls reaching their timeout and re-polling: the steady
                    # cost of holding (level / POLL_TIMEOUT_SECS a second).
                    "answers_in_window": stats.answers - answers_before,
                    "early_answers": stats.early_answers,
                }
            )
            result["levels"].append(entry)
            bench.say(
                f"[idle] {level:,} polls: {entry['rss_per_poll_kb']} KB/poll, "
                f"server CPU {entry['server_cpu_pct']} %, "
                f"{entry['errors_holding']} errors while holding"
            )
    finally:
        gevent.killall(greenlets, timeout=10)
    result.update(
        errors=stats.errors,
        early_answers=stats.early_answers,
        last_error=stats.last_error,
        statuses={str(k): v for k, v in stats.statuses.items()},
    )
    return result
