"""fanout: groups whose members all poll; time until every member has a message."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event

from messenger.bench.client import Connection
from messenger.bench.scenarios.harness import (
    BODY,
    Bench,
    PollStats,
    ScenarioError,
    cpu_us_per,
    cursors_for,
    message_ids,
    open_and_settle,
    poll_loop,
)
from messenger.bench.stats import distribution


@dataclass
class Tracked:
    """One fan-out message: when it was sent and who has it so far."""

    started: float
    waiting: set[int]
    latencies_ms: list[float] = field(default_factory=list)
    done: gevent.event.Event = field(default_factory=gevent.event.Event)


def run_fanout(bench: Bench) -> dict[str, Any]:
    """Groups whose members all poll: time until every member has each message."""
    result: dict[str, Any] = {"sizes": []}
    for size in bench.plan.fanout_sizes:
        result["sizes"].append(fanout_once(bench, size))
    return result


def fanout_once(bench: Bench, size: int) -> dict[str, Any]:
    plan = bench.plan
    members = bench.ensure_users(size)
    bench.server(workers=2)
    owner = members[0]
    conversation_id = bench.api.group(owner, members[1:], f"bench fanout {size}")
    cursors = cursors_for(bench, members)
    tracked: dict[str, Tracked] = {}

    def listener(user_id: int) -> Callable[[float, list[dict[str, Any]]], None]:
        def on_events(arrived: float, events: list[dict[str, Any]]) -> None:
            for client_msg_id in message_ids(events):
                entry = tracked.get(client_msg_id)
                if entry is not None and user_id in entry.waiting:
                    entry.waiting.discard(user_id)
                    entry.latencies_ms.append((arrived - entry.started) * 1000)
                    if not entry.waiting:
                        entry.done.set()

        return on_events

    stats = PollStats()
    bench.is_server_dirty = True
    pollers = [
        gevent.spawn(
            poll_loop, bench.stack.port, user, cursor, stats, listener(user.user_id)
        )
        for user, cursor in zip(members, cursors, strict=True)
    ]
    all_have_it_ms: list[float] = []
    delivery_ms: list[float] = []
    missing = 0
    entry_result: dict[str, Any] = {"members": size, "messages": plan.fanout_messages}
    try:
        entry_result["settling"] = open_and_settle(stats, size)
        errors_at_start = stats.errors
        conn = Connection(bench.stack.port)
        answers_before = stats.answers
        with bench.measured(entry_result), bench.profiler.record(f"fanout-{size}"):
            for k in range(plan.fanout_messages):
                client_msg_id = f"fan-{bench.run_tag}-{size}-{k}"
                entry = tracked[client_msg_id] = Tracked(
                    time.perf_counter(), {m.user_id for m in members}
                )
                bench.api.send(
                    owner, conversation_id, client_msg_id, BODY, conn=conn, retries=0
                )
                entry.done.wait(timeout=plan.drain_timeout_secs)
                delivery_ms.extend(entry.latencies_ms)
                if entry.waiting:
                    missing += len(entry.waiting)
                else:
                    all_have_it_ms.append(max(entry.latencies_ms))
                missing_note = (
                    f", {len(entry.waiting)} missing" if entry.waiting else ""
                )
                bench.say(
                    f"[fanout] {size} members: message {k + 1}/"
                    f"{plan.fanout_messages}, all had it after "
                    f"{max(entry.latencies_ms or [0]):.1f} ms{missing_note}"
                )
                gevent.sleep(0.2)
        conn.close()
        answered = stats.answers - answers_before
        entry_result.update(
            polls_answered=answered,
            # One send per `size` answers: the send's own cost is spread thin.
            worker_cpu_us_per_delivery=cpu_us_per(entry_result["cpu"], answered),
        )
    finally:
        gevent.killall(pollers, timeout=10)
    if not all_have_it_ms:
        raise ScenarioError(
            f"no message reached all {size} members (poll error: {stats.last_error})"
        )
    entry_result.update(
        all_have_it_ms=distribution(all_have_it_ms),
        delivery_ms=distribution(delivery_ms),
        missing=missing,
        poll_errors=stats.errors - errors_at_start,
        early_answers=stats.early_answers,
    )
    return entry_result
