"""`make soak` and `make chaos`: long-running and fault runs that print figures.

    python -m messenger.bench.faults soak [--quick]
    python -m messenger.bench.faults chaos [--short]

soak: many polls held at once (10,000 for 10 minutes; --quick: 500 for 40 s) while
a steady trickle of messages flows; prints each gunicorn worker's RSS at the start
and the end, the errors, and what each member received: acknowledged, delivered
exactly once, lost.

chaos: steady sends, polls and group changes while it kills in turn (SIGKILL) a
gunicorn worker, the push worker, Redis and PostgreSQL, restarting each as an
operator's supervisor would; then checks that every acknowledged message reached
every member of its conversation exactly once and in order, and that every push
due reached its receiver at least once (except for messages acknowledged in the
two seconds before Redis's kill: its append-only file is synced every second).
Prints the counts; exits 1 when anything is lost or repeated.

Both run their own stack (bench/stack.py) under /var/tmp on free ports, bound
every loop in count and time, and stop everything they started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import gevent.pool
import psutil
from gevent.pywsgi import WSGIServer

from messenger.backoff import Backoff
from messenger.bench.client import (
    Api,
    ApiFailure,
    Connection,
    TransportError,
    User,
    events_path,
    raise_open_file_limit,
    retry_after_secs,
    run_bounded,
    unique_suffix,
)
from messenger.bench.stack import REPO_ROOT, Stack
from messenger.embedded import free_port

POLL_TIMEOUT_SECS = 20
# soak: members per group, messages per second (a trickle), and the pause
# between starting two polls (10,000 polls opened at once are a thundering
# herd of reads and presence announcements, not a soak).
GROUP_SIZE = 10
SOAK_SEND_INTERVAL_SECS = 0.5
POLL_START_STAGGER_SECS = 0.006
# A client's retry of a failed send or poll waits this long (bounded tries).
CLIENT_RETRY_SECS = 0.5
SEND_TRIES_MAX = 240  # at 0.5 s: two minutes of outage at most
# After the load stops, members drain their streams within this bound.
DRAIN_SECS = 120.0


def say(text: str) -> None:
    print(text, flush=True)


# ---- what members received --------------------------------------------------------


@dataclass
class Ledger:
    """Acknowledged messages and what each member's cursor chain received."""

    members: dict[int, list[int]] = field(default_factory=dict)  # conv -> user ids
    acknowledged: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    # (user, conversation) -> seqs in the order they arrived
    received: dict[tuple[int, int], list[int]] = field(
        default_factory=lambda: defaultdict(list)
    )
    errors: int = 0

    def record(self, user_id: int, events: list[dict[str, Any]]) -> None:
        for event in events:
            if event.get("type") == "message":
                message = event["message"]
                key = (user_id, int(message["conversation_id"]))
                self.received[key].append(int(message["seq"]))

    def verdict(self) -> dict[str, int]:
        """acknowledged (message x member), exactly_once, lost, repeated, disorder."""
        counts = dict.fromkeys(
            ("acknowledged", "exactly_once", "lost", "repeated", "out_of_order"), 0
        )
        for conversation_id, seqs in self.acknowledged.items():
            for user_id in self.members[conversation_id]:
                got = self.received.get((user_id, conversation_id), [])
                if got != sorted(got):
                    counts["out_of_order"] += 1
                for seq in seqs:
                    counts["acknowledged"] += 1
                    n = got.count(seq)
                    if n == 1:
                        counts["exactly_once"] += 1
                    elif n == 0:
                        counts["lost"] += 1
                    else:
                        counts["repeated"] += 1
        return counts


def send_until_acknowledged(
    api: Api, ledger: Ledger, user: User, conversation_id: int, body: str
) -> dict[str, Any] | None:
    """Send like a careful client: the same client_msg_id until acknowledged."""
    client_msg_id = f"f{unique_suffix()}"
    for _ in range(SEND_TRIES_MAX):
        try:
            message = api.send(user, conversation_id, client_msg_id, body, retries=0)
        except ApiFailure as exc:
            if exc.status == 200:  # a retry of a stored message
                message = None
            else:
                ledger.errors += 1
                gevent.sleep(CLIENT_RETRY_SECS)
                continue
        except TransportError:
            ledger.errors += 1
            gevent.sleep(CLIENT_RETRY_SECS)
            continue
        if message is None:
            page = api.history(user, conversation_id, retries=SEND_TRIES_MAX, limit=200)
            found = [m for m in page["messages"] if m["client_msg_id"] == client_msg_id]
            message = found[0] if found else None
        if message is not None:
            ledger.acknowledged[conversation_id].add(int(message["seq"]))
        return message
    return None


def poll_chain(
    port: int,
    ledger: Ledger | None,
    user: User,
    cursor: str,
    stop: gevent.event.Event,
    errors: list[int],
) -> str:
    """Poll after cursor until stop (recording what arrives); the last cursor."""
    conn = Connection(port, timeout_secs=POLL_TIMEOUT_SECS + 30)
    # Like a well-behaved client: after a failure, back off (doubling, jittered,
    # honouring Retry-After); a fixed short retry from 10,000 polls is a storm.
    retry = Backoff(CLIENT_RETRY_SECS, 30.0, jitter=(0.5, 1.0))
    try:
        while not stop.is_set():
            try:
                r = conn.request(
                    "GET", events_path(cursor, POLL_TIMEOUT_SECS), token=user.token
                )
            except TransportError:
                errors[0] += 1
                conn.close()
                conn = Connection(port, timeout_secs=POLL_TIMEOUT_SECS + 30)
                stop.wait(retry.failed())
                continue
            if r.status != 200:
                errors[0] += 1
                stop.wait(retry.failed(retry_after_secs(r)))
                continue
            retry.reset()
            page = r.json()
            if ledger is not None:
                ledger.record(user.user_id, page["events"])
            cursor = page["cursor"]
        return cursor
    finally:
        conn.close()


def drain(api: Api, ledger: Ledger, user: User, cursor: str) -> None:
    """Every event after cursor, polled with timeout 0, within DRAIN_SECS."""
    deadline = time.monotonic() + DRAIN_SECS
    while time.monotonic() < deadline:
        try:
            page = api.call(
                "GET", events_path(cursor, 0, 500), token=user.token, retries=5
            )
        except (ApiFailure, TransportError):
            gevent.sleep(CLIENT_RETRY_SECS)
            continue
        ledger.record(user.user_id, page["events"])
        cursor = page["cursor"]
        if not page.get("more"):
            return
    raise RuntimeError(f"user {user.user_id}: stream not drained in {DRAIN_SECS} s")


def worker_rss_mb(stack: Stack) -> dict[int, float]:
    found = {}
    for pid in stack.worker_pids():
        with contextlib.suppress(psutil.Error):
            found[pid] = psutil.Process(pid).memory_info().rss / 1e6
    return found


def make_users(api: Api, count: int, label: str) -> list[User]:
    made = run_bounded(
        list(range(count)),
        lambda n: api.create_user(f"{label}{n}_{os.getpid() % 10000}"),
        16,
    )
    return list(made)


def progress(label: str, started: float, total_secs: float, extra: str) -> None:
    done = time.monotonic() - started
    say(f"[{label}] {done:5.0f}/{total_secs:.0f} s  {extra}")


# ---- soak --------------------------------------------------------------------------


def soak(quick: bool) -> int:
    polls_per_user = 5
    users_count, secs = (100, 40.0) if quick else (2000, 600.0)
    raise_open_file_limit()
    stack = Stack(say, shards=8)
    try:
        stack.start(workers=2)
        api = Api(stack.port, pool_size=32, retries=20)
        say(f"[soak] creating {users_count} users")
        users = make_users(api, users_count, "soak")
        ledger = Ledger()
        groups = []
        for start in range(0, users_count, GROUP_SIZE):
            members = users[start : start + GROUP_SIZE]
            conversation_id = api.group(members[0], members[1:], "soak")
            ledger.members[conversation_id] = [u.user_id for u in members]
            groups.append((conversation_id, members[0]))
        cursors = {u.user_id: api.head_cursor(u) for u in users}
        stop = gevent.event.Event()
        errors = [0]
        pollers = []
        for user in users:
            gevent.sleep(POLL_START_STAGGER_SECS * polls_per_user)
            # One chain records; the others are held polls like other devices.
            pollers.append(
                gevent.spawn(
                    poll_chain,
                    stack.port,
                    ledger,
                    user,
                    cursors[user.user_id],
                    stop,
                    errors,
                )
            )
            for _ in range(polls_per_user - 1):
                pollers.append(
                    gevent.spawn(
                        poll_chain,
                        stack.port,
                        None,
                        user,
                        cursors[user.user_id],
                        stop,
                        errors,
                    )
                )
        gevent.sleep(5)
        rss_start = worker_rss_mb(stack)
        say(
            f"[soak] {len(pollers)} polls held; RSS per worker at start (MB): "
            f"{', '.join(f'{v:.0f}' for v in rss_start.values())}"
        )
        started = time.monotonic()
        sent = 0
        next_report = started + 10
        while time.monotonic() - started < secs:
            conversation_id, sender = groups[sent % len(groups)]
            if send_until_acknowledged(api, ledger, sender, conversation_id, "tick"):
                sent += 1
            gevent.sleep(SOAK_SEND_INTERVAL_SECS)
            if time.monotonic() >= next_report:
                progress("soak", started, secs, f"{sent} sent, errors {errors[0]}")
                next_report += 10
        rss_end = worker_rss_mb(stack)
        stop.set()
        gevent.joinall(pollers, timeout=POLL_TIMEOUT_SECS + 30)
        final = {p: p.value for p in pollers[::polls_per_user]}
        for user, poller in zip(users, final, strict=True):
            drain(api, ledger, user, final[poller] or cursors[user.user_id])
        verdict = ledger.verdict()
        say("")
        say("== soak figures")
        say(f"polls held: {len(pollers)} for {secs:.0f} s; messages sent: {sent}")
        say(
            "RSS per worker (MB), start -> end: "
            + ", ".join(
                f"{rss_start[p]:.0f} -> {rss_end.get(p, 0):.0f}" for p in rss_start
            )
        )
        say(f"errors: {errors[0] + ledger.errors}")
        say(
            f"acknowledged: {verdict['acknowledged']}, delivered exactly once: "
            f"{verdict['exactly_once']}, lost: {verdict['lost']}, repeated: "
            f"{verdict['repeated']}, out of order: {verdict['out_of_order']}"
        )
        api.close()
        bad = verdict["lost"] + verdict["repeated"] + verdict["out_of_order"]
        return 0 if bad == 0 and errors[0] + ledger.errors == 0 else 1
    finally:
        stack.stop()


# ---- chaos -------------------------------------------------------------------------


class PushReceiver:
    """A webhook receiver counting pushed messages by (user, conversation, seq)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: dict[tuple[int, int, int], int] = defaultdict(int)
        self.server = WSGIServer(("127.0.0.1", self.port), self._app, log=None)

    def _app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        with contextlib.suppress(ValueError, KeyError):
            push = json.loads(environ["wsgi.input"].read(length))
            for message in push["messages"]:
                key = (push["user_id"], push["conversation_id"], message["seq"])
                self.got[key] += 1
        start_response("204 No Content", [])
        return []


@contextlib.contextmanager
def push_worker(stack: Stack) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """The push worker as a child process; yields a function that restarts it."""
    process: list[subprocess.Popen[bytes]] = []
    log = open(stack.root / "push-worker.log", "ab")  # noqa: SIM115 - closed below

    def start() -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-m", "messenger", "push-worker"],
            cwd=REPO_ROOT,
            env={**stack.env, "MESSENGER_PUSH_COALESCE_SECS": "0.2"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process[:] = [child]
        return child

    start()
    try:
        yield start
    finally:
        for child in process:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(5)
        log.close()


def chaos(short: bool) -> int:
    secs_between_faults = 6.0 if short else 30.0
    # Redis keeps its append-only file, as under `make run`: a kill -9 then
    # loses at most the last second of the push queue (appendfsync everysec),
    # not the whole of it.
    stack = Stack(say, shards=8, redis_persistent=True)
    receiver = PushReceiver()
    receiver.server.start()
    try:
        stack.start(workers=2)
        servers = stack._servers
        api = Api(stack.port, pool_size=16, retries=40)
        users = make_users(api, 12, "chaos")
        online, offline = users[:8], users[8:]
        for user in offline:
            api.call(
                "POST",
                "/v1/devices",
                token=user.token,
                expect=(201,),
                body={
                    "kind": "webhook",
                    "url": f"http://127.0.0.1:{receiver.port}/u{user.user_id}",
                },
            )
        ledger = Ledger()
        groups = []
        for n in range(4):
            members = [online[n], online[(n + 1) % 8], online[(n + 2) % 8]]
            members.append(offline[n % len(offline)])
            conversation_id = api.group(members[0], members[1:], f"chaos {n}")
            ledger.members[conversation_id] = [u.user_id for u in members]
            groups.append((conversation_id, members))
        churn = api.group(online[0], [online[1]], "churn")
        # Offline members never poll (a poll, even for the head, makes a user
        # online for 30 s, and online members get no push): they read from the
        # start of their streams at the end.
        cursors = {u.user_id: api.head_cursor(u) for u in online}
        cursors.update((u.user_id, "0") for u in offline)
        stop = gevent.event.Event()
        errors = [0]
        with push_worker(stack) as restart_push_worker:
            pollers = {
                u.user_id: gevent.spawn(
                    poll_chain, stack.port, ledger, u, cursors[u.user_id], stop, errors
                )
                for u in online
            }
            sent_at: dict[tuple[int, int], float] = {}

            def sender(index: int) -> int:
                conversation_id, members = groups[index]
                count = 0
                while not stop.is_set():
                    author = members[count % 3]  # online members send
                    message = send_until_acknowledged(
                        api, ledger, author, conversation_id, f"chaos {count}"
                    )
                    if message is not None:
                        sent_at[(conversation_id, int(message["seq"]))] = time.time()
                        count += 1
                    stop.wait(0.1)
                return count

            def churner() -> int:
                changes = 0
                while not stop.is_set():
                    with contextlib.suppress(ApiFailure, TransportError):
                        api.call(
                            "POST",
                            f"/v1/conversations/{churn}/members",
                            token=online[0].token,
                            body={"user_id": online[2].user_id},
                            expect=(201,),
                        )
                        api.call(
                            "DELETE",
                            f"/v1/conversations/{churn}/members/{online[2].user_id}",
                            token=online[0].token,
                            expect=(204,),
                        )
                        changes += 2
                    stop.wait(0.3)
                return changes

            senders = [gevent.spawn(sender, n) for n in range(len(groups))]
            churning = gevent.spawn(churner)
            redis_window = [0.0, 0.0]
            faults = []
            fault_at: dict[str, float] = {}

            def fault(name: str, action: Callable[[], None]) -> None:
                stop.wait(secs_between_faults)
                say(f"[chaos] kill -9: {name}")
                fault_at[name] = time.time()
                action()
                faults.append(name)

            def kill_worker() -> None:
                pids = stack.worker_pids()
                os.kill(pids[0], signal.SIGKILL)  # gunicorn's master starts another

            def kill_redis() -> None:
                redis_window[0] = time.time()
                pid = servers.redis.pid
                os.kill(pid, signal.SIGKILL)
                servers.redis._process.wait(10)
                servers.redis._process = None
                gevent.sleep(1)
                servers.redis.start()
                redis_window[1] = redis_window[0]

            def kill_postgres() -> None:
                for pid in stack.postgres_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 30
                while stack.postgres_pids() and time.monotonic() < deadline:
                    gevent.sleep(0.1)
                gevent.sleep(1)
                servers.pg.start()

            def kill_and_restart_push() -> None:
                for child in psutil.Process(os.getpid()).children():
                    with contextlib.suppress(psutil.Error):
                        if "push-worker" in " ".join(child.cmdline()):
                            child.send_signal(signal.SIGKILL)
                            child.wait(10)
                restart_push_worker()

            fault("a gunicorn worker", kill_worker)

            fault("the push worker", kill_and_restart_push)
            fault("Redis", kill_redis)
            fault("PostgreSQL", kill_postgres)
            stop.wait(secs_between_faults)
            stop.set()
            sent = sum(s.get(timeout=SEND_TRIES_MAX) for s in senders)
            changes = churning.get(timeout=60)
            gevent.joinall(list(pollers.values()), timeout=POLL_TIMEOUT_SECS + 30)
            for user in online:
                drain(api, ledger, user, pollers[user.user_id].value or "0")
            for user in offline:
                drain(api, ledger, user, cursors[user.user_id])
            # Pushes: given time to arrive (retries back off for seconds). Those
            # queued in the two seconds before Redis's kill may be gone with it
            # (its append-only file is synced every second); those sent while
            # it was down wait in the workers and must all arrive.
            offline_ids = {u.user_id for u in offline}
            offline_copies = [
                (user_id, conversation_id, seq)
                for conversation_id, seqs in ledger.acknowledged.items()
                for seq in seqs
                for user_id in ledger.members[conversation_id]
                if user_id in offline_ids
            ]
            due = [
                (user_id, conversation_id, seq)
                for user_id, conversation_id, seq in offline_copies
                if not (
                    redis_window[0] - 2
                    <= sent_at.get((conversation_id, seq), 0)
                    <= redis_window[1]
                )
            ]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(receiver.got.get(k) for k in due):
                    break
                gevent.sleep(0.5)
        verdict = ledger.verdict()
        pushed = sum(1 for k in due if receiver.got.get(k))
        say("")
        say("== chaos figures")
        say(f"killed in turn (SIGKILL): {', '.join(faults)}")
        say(
            f"messages acknowledged: {sent}; group changes: {changes}; "
            f"client retries (errors seen): {errors[0] + ledger.errors}"
        )
        say(
            f"acknowledged (message x member): {verdict['acknowledged']}, delivered "
            f"exactly once: {verdict['exactly_once']}, lost: {verdict['lost']}, "
            f"repeated: {verdict['repeated']}, out of order: "
            f"{verdict['out_of_order']}"
        )
        say(
            f"pushes due: {len(due)} (of {len(offline_copies)}: all but the 2 s "
            f"before Redis's kill), delivered at least once: {pushed}, missing: "
            f"{len(due) - pushed}"
        )
        for key in sorted(k for k in due if not receiver.got.get(k)):
            at = sent_at.get((key[1], key[2]), 0.0)
            nearest = min(fault_at.items(), key=lambda item: abs(item[1] - at))
            say(
                f"  missing push: user {key[0]} conversation {key[1]} seq {key[2]}, "
                f"sent {at - nearest[1]:+.1f} s from killing {nearest[0]}"
            )
        api.close()
        bad = verdict["lost"] + verdict["repeated"] + verdict["out_of_order"]
        return 0 if bad == 0 and pushed == len(due) else 1
    finally:
        receiver.server.stop(timeout=2)
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m messenger.bench.faults")
    sub = parser.add_subparsers(dest="run", required=True)
    soak_args = sub.add_parser("soak", help="many held polls for a long time")
    soak_args.add_argument("--quick", action="store_true", help="500 polls, 40 s")
    chaos_args = sub.add_parser("chaos", help="kill processes under load")
    chaos_args.add_argument("--short", action="store_true", help="6 s between kills")
    args = parser.parse_args(argv)
    if args.run == "soak":
        return soak(args.quick)
    return chaos(args.short)


if __name__ == "__main__":
    sys.exit(main())
