"""The scenarios of the benchmark; each returns a JSON-ready dict of its figures.

A scenario sets up what it needs through the API (users, conversations, backlogs),
then measures one thing with the CPU of every process sampled around the measured
phase. Every loop is bounded in count and in time. A scenario raises ScenarioError
when it cannot produce its figures; errors it merely counts are figures too.
"""

from __future__ import annotations

import gc
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import gevent
import gevent.event
import gevent.pool

from messenger.bench import procs
from messenger.bench.client import (
    Api,
    ApiFailure,
    Connection,
    TransportError,
    User,
    backoff_secs,
    events_path,
    retry_after_secs,
    run_bounded,
    unique_suffix,
)
from messenger.bench.profiling import Profiler
from messenger.bench.seed import SeedError, analyze_messages, extend_by_copy
from messenger.bench.stack import Stack
from messenger.bench.stats import distribution, percentile

# The server's maximum poll timeout: polls are held as long as a real client would.
POLL_TIMEOUT_SECS = 55
EVENTS_PAGE_MAX = 500
# About 90 bytes, like a line of chat.
BODY = "The quick brown fox jumps over the lazy dog; " * 2
PROGRESS_INTERVAL_SECS = 2.0
# Each user created costs two argon2 hashes, which block a gevent worker while they
# run: more concurrency than this only queues on the server.
USER_CREATE_CONCURRENCY = 16
SETUP_CONCURRENCY = 50
SETUP_RETRIES = 8
# Before timing anything, held polls must have been quiet this long (presence
# announcements of polls opened together answer each other's polls for a while).
SETTLE_QUIET_SECS = 2.0
SETTLE_TIMEOUT_SECS = 60.0
OPEN_TIMEOUT_SECS = 30.0
# Points of the RSS-against-held-polls chart while polls are being opened.
RAMP_SAMPLES = 40
# The client's event-loop lag probe: a sleep this long, timed.
LAG_PROBE_SECS = 0.01
# A held poll answered this much before its timeout without events was woken early.
EARLY_ANSWER_MARGIN_SECS = 1.0


class ScenarioError(Exception):
    """The scenario could not produce its figures."""


@dataclass(frozen=True)
class Plan:
    """What each scenario does; FULL matches the issue, QUICK is the CI smoke test."""

    quick: bool
    idle_levels: tuple[int, ...]
    # The server answers the oldest poll early beyond 8 per user per worker.
    idle_polls_per_user: int
    # Polls opened per second: a reconnecting population, not one burst.
    idle_ramp_per_sec: float
    idle_settle_secs: float
    idle_cpu_window_secs: float
    wake_users: int
    wake_rate_per_sec: float
    wake_secs: float
    send_senders: int
    send_secs: float
    send_verify_sample: int
    fanout_sizes: tuple[int, ...]
    fanout_messages: int
    catchup_events: int
    catchup_senders: int
    history_sizes: tuple[int, ...]
    history_requests: int
    # Messages of each history conversation sent through the API; the rest of its
    # length is copied in SQL (seed.py), since one conversation's sends are serial.
    history_api_seed: int
    seed_concurrency: int = 50
    drain_timeout_secs: float = 10.0

    def users_needed(self, scenarios: Sequence[str]) -> int:
        """Pool users the chosen scenarios share (extra users are made apart)."""
        needs = {
            "idle": math.ceil(max(self.idle_levels) / self.idle_polls_per_user),
            "wake": self.wake_users,
            "send": 2 * self.send_senders,
            "fanout": max(self.fanout_sizes),
            "catchup": self.catchup_senders,
            "history": 2 * len(self.history_sizes),
        }
        return max([needs[s] for s in scenarios] or [0])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Plan(
    quick=False,
    idle_levels=(1_000, 5_000, 10_000),
    idle_polls_per_user=7,
    idle_ramp_per_sec=500.0,
    idle_settle_secs=3.0,
    idle_cpu_window_secs=10.0,
    wake_users=1_000,
    wake_rate_per_sec=50.0,
    wake_secs=20.0,
    send_senders=50,
    send_secs=20.0,
    send_verify_sample=500,
    fanout_sizes=(100, 500),
    fanout_messages=20,
    catchup_events=10_000,
    catchup_senders=50,
    history_sizes=(1_000, 100_000),
    history_requests=500,
    history_api_seed=2_000,
)

QUICK = Plan(
    quick=True,
    idle_levels=(200,),
    idle_polls_per_user=4,
    idle_ramp_per_sec=200.0,
    idle_settle_secs=1.0,
    idle_cpu_window_secs=3.0,
    wake_users=100,
    wake_rate_per_sec=50.0,
    wake_secs=5.0,
    send_senders=50,
    send_secs=5.0,
    send_verify_sample=100,
    fanout_sizes=(20,),
    fanout_messages=10,
    catchup_events=1_000,
    catchup_senders=20,
    history_sizes=(1_000, 5_000),
    history_requests=100,
    history_api_seed=1_000,
    drain_timeout_secs=5.0,
)


class Bench:
    """What the scenarios share: the stack, the API client, the user pool, output."""

    def __init__(
        self,
        stack: Stack,
        plan: Plan,
        profiler: Profiler,
        say: Callable[[str], None],
        seed: int = 7,
    ) -> None:
        self.stack = stack
        self.plan = plan
        self.profiler = profiler
        self.say = say
        # Setup retries a busy server's 503s like a client would; timed calls don't.
        self.api = Api(stack.port, pool_size=64, retries=SETUP_RETRIES)
        self.users: list[User] = []
        self.rng = random.Random(seed)
        self.run_tag = format(int(time.time()), "x")[-6:]
        self._extra_users = 0
        # Polls a scenario left held on the server (their sockets are closed, but a
        # worker only notices when it answers): the next scenario restarts gunicorn.
        self.is_server_dirty = False
        self.cpu = procs.CpuMeter(stack.process_groups)

    def close(self) -> None:
        self.api.close()

    def server(self, workers: int) -> None:
        """Make sure gunicorn runs with this many workers and no stale held polls."""
        if self.is_server_dirty or self.stack.workers != workers:
            # An idle keep-alive connection keeps a gevent worker alive until
            # gunicorn's graceful_timeout: close ours first, or each restart waits.
            self.api.pool.close()
            self.stack.stop_server()
            self.stack.start_server(workers)
            self.is_server_dirty = False
        self.stack.check_alive()

    def ensure_users(self, count: int) -> list[User]:
        """The first count users of the shared pool, creating the missing ones."""
        missing = range(len(self.users), count)
        if missing:
            t0 = time.monotonic()
            done: list[User] = []

            def create(index: int) -> User:
                user = self.api.create_user(f"b{self.run_tag}_{index}")
                done.append(user)
                return user

            label = f"[users] creating {len(missing):,} users"
            with ticker(
                self.say,
                lambda: (
                    f"{label}: {len(done):,} done "
                    f"({len(done) / max(time.monotonic() - t0, 1e-3):.0f}/s)"
                ),
            ):
                created = run_bounded(list(missing), create, USER_CREATE_CONCURRENCY)
            self.users.extend(created)
            self.say(f"{label}: done in {time.monotonic() - t0:.1f} s")
        return self.users[:count]

    def extra_user(self, purpose: str) -> User:
        """A user outside the pool, with no conversation yet."""
        self._extra_users += 1
        return self.api.create_user(f"b{self.run_tag}_{purpose}{self._extra_users}")

    @contextmanager
    def measured(self, into: dict[str, Any], key: str = "cpu") -> Iterator[None]:
        """Record CPU (percent of one core) and the client's loop lag over the block.

        Lag is how late a 10 ms sleep of this process wakes: when it is large, the
        client itself delayed the answers it timed.
        """
        lags_ms: list[float] = []

        def watch_lag() -> None:
            while True:
                t0 = time.perf_counter()
                gevent.sleep(LAG_PROBE_SECS)
                lags_ms.append((time.perf_counter() - t0 - LAG_PROBE_SECS) * 1000)

        # Setup's objects (users, sockets, greenlets) move out of the collector's
        # reach, so no long collection pauses the client while it times answers.
        gc.collect()
        gc.freeze()
        start = self.cpu.snapshot()  # reads /proc: blocking, so outside the probe
        watcher = gevent.spawn(watch_lag)
        try:
            yield
        finally:
            watcher.kill()
            usage: dict[str, Any] = procs.CpuMeter.percent(start, self.cpu.snapshot())
            gc.unfreeze()
            if lags_ms:
                lags_ms.sort()
                usage["client_lag_p99_ms"] = round(percentile(lags_ms, 99), 2)
                usage["client_lag_max_ms"] = round(lags_ms[-1], 2)
            into[key] = usage


@contextmanager
def ticker(
    say: Callable[[str], None],
    line: Callable[[], str],
    interval_secs: float = PROGRESS_INTERVAL_SECS,
) -> Iterator[None]:
    """say(line()) every interval while the block runs (the progress display)."""

    def loop() -> None:
        while True:
            gevent.sleep(interval_secs)
            say(line())

    greenlet = gevent.spawn(loop)
    try:
        yield
    finally:
        greenlet.kill(block=False)


# -- held polls ----------------------------------------------------------------------


@dataclass
class PollStats:
    in_flight: int = 0  # polls sent and not yet answered: held, from the client's view
    answers: int = 0
    early_answers: int = 0
    errors: int = 0
    last_error: str | None = None
    statuses: dict[int, int] = field(default_factory=dict)


def poll_loop(
    port: int,
    user: User,
    cursor: str,
    stats: PollStats,
    on_events: Callable[[float, list[dict[str, Any]]], None],
) -> None:
    """Hold a long poll for user, re-issuing it as answers come; ends when killed.

    on_events(arrival_time, events) is called for every answer with events. After a
    failure it backs off like a well-behaved client (exponential, jittered, at least
    the server's Retry-After), so a struggling server is not hammered by the bench.
    """
    conn = Connection(port, timeout_secs=POLL_TIMEOUT_SECS + 15)
    failures = 0
    try:
        while True:
            sent = time.perf_counter()
            stats.in_flight += 1
            try:
                response = conn.request(
                    "GET", events_path(cursor, POLL_TIMEOUT_SECS), token=user.token
                )
            except TransportError as exc:
                stats.errors += 1
                stats.last_error = str(exc)
                gevent.sleep(backoff_secs(failures))
                failures += 1
                continue
            finally:
                stats.in_flight -= 1
            arrived = time.perf_counter()
            stats.statuses[response.status] = stats.statuses.get(response.status, 0) + 1
            if response.status != 200:
                stats.errors += 1
                stats.last_error = (
                    f"poll answered {response.status}: "
                    f"{response.body[:200].decode('utf-8', 'replace').strip()}"
                )
                gevent.sleep(backoff_secs(failures, retry_after_secs(response)))
                failures += 1
                continue
            failures = 0
            stats.answers += 1
            answer = response.json()
            cursor = answer["cursor"]
            events = answer["events"]
            if events:
                on_events(arrived, events)
            elif arrived - sent < POLL_TIMEOUT_SECS - EARLY_ANSWER_MARGIN_SECS:
                stats.early_answers += 1
    finally:
        conn.close()


def open_and_settle(stats: PollStats, count: int) -> dict[str, Any]:
    """Wait (bounded) until count polls are held and quiet; say how it went.

    Raises:
        ScenarioError: not one poll could be held.
    """
    t0 = time.monotonic()
    errors = stats.errors
    wait_until(partial(_at_least, stats, count), OPEN_TIMEOUT_SECS)
    result = settle(stats, SETTLE_QUIET_SECS, SETTLE_TIMEOUT_SECS)
    result.update(
        held=stats.in_flight,
        open_secs=round(time.monotonic() - t0, 1),
        errors_opening=stats.errors - errors,
    )
    if stats.in_flight == 0:
        raise ScenarioError(f"no poll could be held: {stats.last_error}")
    return result


def settle(stats: PollStats, quiet_secs: float, timeout_secs: float) -> dict[str, Any]:
    """Wait until no held poll was answered for quiet_secs (or timeout_secs passed).

    Polls opened together set off presence announcements that answer each other's
    polls; the measurement starts once that has died down. Returns what happened.
    """
    t0 = time.monotonic()
    answers, errors = stats.answers, stats.errors
    last_change, last_seen = t0, (stats.answers, stats.errors)
    while time.monotonic() - t0 < timeout_secs:
        gevent.sleep(0.1)
        now_seen = (stats.answers, stats.errors)
        if now_seen != last_seen:
            last_change, last_seen = time.monotonic(), now_seen
        elif time.monotonic() - last_change >= quiet_secs:
            break
    return {
        "settle_secs": round(time.monotonic() - t0, 1),
        "answers_while_settling": stats.answers - answers,
        "errors_while_settling": stats.errors - errors,
        "is_settled": time.monotonic() - last_change >= quiet_secs,
    }


def _at_least(stats: PollStats, count: int) -> bool:
    return stats.in_flight >= count


def ignore_events(arrived: float, events: list[dict[str, Any]]) -> None:
    return None


def wait_until(
    condition: Callable[[], bool], timeout_secs: float, step_secs: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout_secs
    while not condition():
        if time.monotonic() >= deadline:
            return False
        gevent.sleep(step_secs)
    return True


def message_ids(events: list[dict[str, Any]]) -> Iterator[str]:
    for event in events:
        if event.get("type") == "message":
            yield event["message"]["client_msg_id"]


def cursors_for(bench: Bench, users: Sequence[User]) -> list[str]:
    return run_bounded(users, bench.api.head_cursor, SETUP_CONCURRENCY)


def seed_messages(
    bench: Bench, label: str, jobs: Sequence[tuple[User, int]], per_job: int
) -> float:
    """Send per_job messages for every (sender, conversation) job; return msgs/s."""
    sent = [0]
    total = len(jobs) * per_job
    t0 = time.monotonic()

    def send_all(job: tuple[User, int]) -> None:
        sender, conversation_id = job
        conn = Connection(bench.api.port)
        try:
            for _ in range(per_job):
                bench.api.send(
                    sender,
                    conversation_id,
                    f"seed-{bench.run_tag}-{unique_suffix()}",
                    BODY,
                    conn=conn,
                )
                sent[0] += 1
        finally:
            conn.close()

    with ticker(
        bench.say,
        lambda: (
            f"[{label}] seeding {sent[0]:,}/{total:,} messages "
            f"({sent[0] / max(time.monotonic() - t0, 1e-3):.0f}/s)"
        ),
    ):
        run_bounded(jobs, send_all, bench.plan.seed_concurrency)
    rate = total / max(time.monotonic() - t0, 1e-6)
    bench.say(f"[{label}] seeded {total:,} messages at {rate:.0f}/s")
    return round(rate, 1)


# -- idle ------------------------------------------------------------------------------


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
                wait_until(partial(_at_least, stats, level), 30)
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
            with bench.measured(entry):
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


# -- wake ------------------------------------------------------------------------------


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


# -- send ------------------------------------------------------------------------------


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


# -- fanout ----------------------------------------------------------------------------


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


# -- catchup ---------------------------------------------------------------------------


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


# -- history ---------------------------------------------------------------------------


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


SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "idle": run_idle,
    "wake": run_wake,
    "send": run_send,
    "fanout": run_fanout,
    "catchup": run_catchup,
    "history": run_history,
}
