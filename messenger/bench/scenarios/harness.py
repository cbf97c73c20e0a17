"""What every scenario shares: the plan, the Bench (stack, API client, user pool, CPU
metering), held-poll loops and settling, seeding, progress lines.

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

from messenger.bench import procs
from messenger.bench.client import (
    Api,
    Connection,
    Response,
    TransportError,
    User,
    backoff_secs,
    events_path,
    retry_after_secs,
    run_bounded,
    unique_suffix,
)
from messenger.bench.profiling import Profiler
from messenger.bench.stack import Stack
from messenger.bench.stats import percentile

# The server's maximum poll timeout: polls are held as long as a real client would.
POLL_TIMEOUT_SECS = 55
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


def timed_request(
    conn: Connection, stats: PollStats, failures: int, path: str, **kwargs: Any
) -> tuple[Response, float, float] | None:
    """One GET of a poll loop, counted in stats: (response, sent, arrived), or
    None after a transport error (counted, and waited out with the backoff of
    `failures` failures in a row)."""
    sent = time.perf_counter()
    stats.in_flight += 1
    try:
        response = conn.request("GET", path, **kwargs)
    except TransportError as exc:
        stats.errors += 1
        stats.last_error = str(exc)
        gevent.sleep(backoff_secs(failures))
        return None
    finally:
        stats.in_flight -= 1
    arrived = time.perf_counter()
    stats.statuses[response.status] = stats.statuses.get(response.status, 0) + 1
    return response, sent, arrived


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
            timed = timed_request(
                conn,
                stats,
                failures,
                events_path(cursor, POLL_TIMEOUT_SECS),
                token=user.token,
            )
            if timed is None:
                failures += 1
                continue
            response, sent, arrived = timed
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
    wait_until(partial(holds_at_least, stats, count), OPEN_TIMEOUT_SECS)
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


def holds_at_least(stats: PollStats, count: int) -> bool:
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


def cpu_us_per(cpu: dict[str, Any], count: int) -> float | None:
    """Microseconds of gunicorn worker CPU per unit of work in a measured phase
    (Bench.measured's "workers_cpu_secs"); None when nothing was done."""
    secs = cpu.get("workers_cpu_secs")
    if secs is None or count <= 0:
        return None
    return round(secs * 1e6 / count, 1)


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
