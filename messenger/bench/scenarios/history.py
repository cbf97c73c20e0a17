"""history: newest-page and deep-page latency for conversations of different
lengths."""

from __future__ import annotations

import math
import time
from typing import Any

from messenger.bench.client import Connection, User
from messenger.bench.scenarios.harness import (
    Bench,
    ScenarioError,
    seed_messages,
    ticker,
)
from messenger.bench.seed import SeedError, analyze_messages, extend_by_copy
from messenger.bench.stats import distribution


def run_history(bench: Bench) -> dict[str, Any]:
    """Newest-page and deep-page latency for conversations of different lengths."""
    plan = bench.plan
    pool = bench.ensure_users(2 * len(plan.history_sizes))
    bench.server(workers=2)
    readers: list[tuple[int, User, int]] = []  # size, reader, conversation
    seeding: list[dict[str, Any]] = []
    for i, size in enumerate(plan.history_sizes):
        writer, reader = pool[2 * i], pool[2 * i + 1]
        conversation_id = bench.api.direct(writer, reader)
        by_api = min(size, plan.history_api_seed)
        jobs = [(writer, conversation_id)] * plan.seed_concurrency
        label = f"history {size:,}"
        rate = seed_messages(
            bench, label, jobs, math.ceil(by_api / plan.seed_concurrency)
        )
        seeding.append({"messages": size, "by_api": by_api, "api_per_sec": rate})
        if size > by_api:
            t0 = time.monotonic()
            try:
                extend_by_copy(
                    bench.stack.database_url, bench.stack.shards, conversation_id, size
                )
                seeding[-1]["by_sql_copy"] = size - by_api
                bench.say(
                    f"[{label}] copied up to {size:,} messages in SQL "
                    f"({time.monotonic() - t0:.1f} s)"
                )
            except SeedError as exc:
                bench.say(f"[{label}] {exc}; sending the rest through the API")
                rest = math.ceil((size - by_api) / plan.seed_concurrency)
                seeding[-1]["by_api"] = by_api + rest * plan.seed_concurrency
                seeding[-1]["sql_copy_error"] = str(exc)[:300]
                seed_messages(bench, label, jobs, rest)
        try:
            analyze_messages(
                bench.stack.database_url, bench.stack.shards, conversation_id
            )
            seeding[-1]["analyzed"] = True
        except SeedError as exc:
            bench.say(f"[{label}] {exc}")
        last_seq = bench.api.conversation(reader, conversation_id)["last_seq"]
        if last_seq < size:
            raise ScenarioError(f"the {size:,}-message conversation has {last_seq:,}")
        readers.append((size, reader, conversation_id))
    conn = Connection(bench.stack.port)
    newest: dict[int, list[float]] = {size: [] for size, _, _ in readers}
    deep: dict[int, list[float]] = {size: [] for size, _, _ in readers}

    def timed(reader: User, conversation_id: int, **params: int) -> float:
        t0 = time.perf_counter()
        page = bench.api.history(
            reader, conversation_id, conn=conn, retries=0, **params
        )
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if not page["messages"]:
            raise ScenarioError(f"empty history page for {params}")
        return elapsed_ms

    result: dict[str, Any] = {
        "seeding": seeding,
        "requests_per_kind": plan.history_requests,
    }
    for _, reader, conversation_id in readers:  # warm-up, not measured
        for _ in range(20):
            timed(reader, conversation_id)
    done = [0]
    with (
        bench.measured(result),
        bench.profiler.record("history"),
        ticker(
            bench.say, lambda: f"[history] {done[0]}/{plan.history_requests} rounds"
        ),
    ):
        # Interleaved, so every length sees the same machine conditions.
        for _ in range(plan.history_requests):
            for size, reader, conversation_id in readers:
                newest[size].append(timed(reader, conversation_id))
                before = bench.rng.randint(51, max(52, size // 10))
                deep[size].append(timed(reader, conversation_id, before=before))
            done[0] += 1
    conn.close()
    result["sizes"] = [
        {
            "messages": size,
            "newest_ms": distribution(newest[size]),
            "deep_ms": distribution(deep[size]),
        }
        for size, _, _ in readers
    ]
    return result
