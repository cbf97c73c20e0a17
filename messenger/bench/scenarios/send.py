"""send: concurrent senders in 1:1 conversations; durable messages/s, latency, and a
read-back of what was acknowledged."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gevent

from messenger.bench.client import (
    ApiFailure,
    Connection,
    TransportError,
    User,
    run_bounded,
)
from messenger.bench.scenarios.harness import (
    BODY,
    SETUP_CONCURRENCY,
    Bench,
    ScenarioError,
    cpu_us_per,
    ticker,
)
from messenger.bench.stats import distribution


def run_send(bench: Bench) -> dict[str, Any]:
    """Concurrent senders in 1:1 conversations: durable messages/s and latency."""
    plan = bench.plan
    pool = bench.ensure_users(2 * plan.send_senders)
    senders, receivers = pool[: plan.send_senders], pool[plan.send_senders :]
    bench.server(workers=2)
    conversation_ids = run_bounded(
        list(range(plan.send_senders)),
        lambda i: bench.api.direct(senders[i], receivers[i]),
        SETUP_CONCURRENCY,
    )
    last_seq_before = run_bounded(
        list(range(plan.send_senders)),
        lambda i: bench.api.conversation(senders[i], conversation_ids[i])["last_seq"],
        SETUP_CONCURRENCY,
    )
    latencies_ms: list[float] = []
    stored: list[tuple[int, int, int, str, str]] = []  # sender, conv, seq, id, body
    errors = {"rejected": 0, "uncertain": 0}
    last_error: list[str] = []
    per_second: dict[int, int] = {}
    t_start = time.monotonic()
    deadline = t_start + plan.send_secs

    def send_loop(index: int) -> None:
        conn = Connection(bench.stack.port, timeout_secs=30)
        try:
            k = 0
            while time.monotonic() < deadline:
                client_msg_id = f"send-{bench.run_tag}-{index}-{k}"
                body = f"{BODY}{index}/{k}"
                k += 1
                t0 = time.perf_counter()
                try:
                    message = bench.api.send(
                        senders[index],
                        conversation_ids[index],
                        client_msg_id,
                        body,
                        conn=conn,
                        retries=0,
                    )
                except ApiFailure as exc:
                    errors["rejected"] += 1
                    last_error[:] = [str(exc)]
                    gevent.sleep(0.05)
                    continue
                except TransportError as exc:  # it may or may not have been stored
                    errors["uncertain"] += 1
                    last_error[:] = [str(exc)]
                    gevent.sleep(0.05)
                    continue
                latencies_ms.append((time.perf_counter() - t0) * 1000)
                stored.append(
                    (
                        index,
                        conversation_ids[index],
                        int(message["seq"]),
                        client_msg_id,
                        body,
                    )
                )
                second = int(time.monotonic() - t_start)
                per_second[second] = per_second.get(second, 0) + 1
        finally:
            conn.close()

    def progress() -> str:
        elapsed = max(time.monotonic() - t_start, 1e-3)
        return (
            f"[send] {elapsed:.0f}/{plan.send_secs:.0f} s, {len(stored):,} stored "
            f"({len(stored) / elapsed:.0f}/s), "
            f"{errors['rejected'] + errors['uncertain']} errors"
        )

    result: dict[str, Any] = {"senders": plan.send_senders}
    with (
        bench.measured(result),
        bench.profiler.record("send"),
        ticker(bench.say, progress),
    ):
        loops = [gevent.spawn(send_loop, i) for i in range(plan.send_senders)]
        gevent.joinall(loops, timeout=plan.send_secs + 60)
        gevent.killall(loops, timeout=5)
    elapsed = time.monotonic() - t_start
    if not stored:
        raise ScenarioError(f"no message was stored: {last_error}")
    result.update(
        duration_secs=round(elapsed, 2),
        ok=len(stored),
        durable_per_sec=round(len(stored) / elapsed, 1),
        worker_cpu_us_per_send=cpu_us_per(result["cpu"], len(stored)),
        errors=errors["rejected"],
        uncertain=errors["uncertain"],
        last_error=last_error[0] if last_error else None,
        latency_ms=distribution(latencies_ms),
        # Whole seconds only: the last, partial one would read as a drop.
        per_second=[per_second.get(s, 0) for s in range(int(plan.send_secs))],
        verify=verify_stored(
            bench,
            senders,
            conversation_ids,
            last_seq_before,
            stored,
            errors["uncertain"],
        ),
    )
    return result


def verify_stored(
    bench: Bench,
    senders: Sequence[User],
    conversation_ids: Sequence[int],
    last_seq_before: Sequence[int],
    stored: Sequence[tuple[int, int, int, str, str]],
    uncertain: int,
) -> dict[str, Any]:
    """Read back a sample of the 201s, and check every conversation's seq count.

    A conversation's last_seq may exceed the 201s it got only by requests whose answer
    was lost (uncertain); fewer would mean an acknowledged message is missing.
    """
    sample = bench.rng.sample(
        list(stored), min(bench.plan.send_verify_sample, len(stored))
    )
    failures: list[str] = []

    def check(entry: tuple[int, int, int, str, str]) -> None:
        index, conversation_id, seq, client_msg_id, body = entry
        page = bench.api.history(
            senders[index], conversation_id, after=seq - 1, limit=1
        )
        found = page["messages"][0] if page["messages"] else None
        if (
            found is None
            or found["seq"] != seq
            or found["client_msg_id"] != client_msg_id
            or found["body"] != body
        ):
            failures.append(
                f"conversation {conversation_id} seq {seq}: {found!r}"[:300]
            )

    run_bounded(sample, check, SETUP_CONCURRENCY)
    acknowledged: dict[int, int] = {}
    for index, *_ in stored:
        acknowledged[index] = acknowledged.get(index, 0) + 1
    last_seq_after = run_bounded(
        list(range(len(senders))),
        lambda i: bench.api.conversation(senders[i], conversation_ids[i])["last_seq"],
        SETUP_CONCURRENCY,
    )
    shortfall = extra = 0
    pairs = zip(last_seq_before, last_seq_after, strict=True)
    for i, (before, after) in enumerate(pairs):
        committed = after - before
        shortfall += max(0, acknowledged.get(i, 0) - committed)
        extra += max(0, committed - acknowledged.get(i, 0))
    bench.say(
        f"[send] verified {len(sample)} stored messages: {len(failures)} "
        f"failures; seq shortfall {shortfall}, extra {extra}"
    )
    return {
        "checked": len(sample),
        "failed": len(failures),
        "failures": failures[:5],
        "seq_shortfall": shortfall,
        "seq_extra": extra,
        "seq_extra_allowed": uncertain,
    }
