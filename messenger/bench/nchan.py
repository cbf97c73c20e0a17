"""`--compare nchan`: the wake, fan-out and idle scenarios against Nchan (nginx's C
long-poll module), with the bench's own client, in the same run.

Nothing is installed here: when nginx or its nchan module is missing, the bench says
what to install (`apt-get install nginx libnginx-mod-nchan`) and stops before
starting anything. Nchan runs from a small config of its own on a free loopback
port (a long-poll subscriber location and a publisher location), with as many
workers as gunicorn has, and is stopped at the end.

The same shapes as ours: a subscriber per user (channel) holding a long poll of up
to 55 s and re-polling at once with the message id of its last answer
(If-Modified-Since / If-None-Match); a publish per message (our send). Nchan keeps
messages in memory only: it is not durable, which is the gap the ratios allow for.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.pool

from messenger.bench import procs
from messenger.bench.client import (
    Connection,
    ConnectionPool,
    TransportError,
    backoff_secs,
)
from messenger.bench.scenarios.harness import (
    BODY,
    EARLY_ANSWER_MARGIN_SECS,
    POLL_TIMEOUT_SECS,
    Plan,
    PollStats,
    holds_at_least,
    settle,
    timed_request,
    wait_until,
)
from messenger.bench.stats import distribution
from messenger.embedded import free_port

INSTALL_HINT = "apt-get install nginx libnginx-mod-nchan"
MODULE_PATHS = (
    Path("/usr/lib/nginx/modules/ngx_nchan_module.so"),
    Path("/usr/lib64/nginx/modules/ngx_nchan_module.so"),
    Path("/usr/local/nginx/modules/ngx_nchan_module.so"),
)
START_TIMEOUT_SECS = 10
STOP_TIMEOUT_SECS = 10
OPEN_TIMEOUT_SECS = 30

CONFIG = """\
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
load_module {module};
events {{ worker_connections 30000; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    nchan_max_reserved_memory 128M;
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber longpoll;
            nchan_channel_id $1;
            nchan_subscriber_timeout {timeout}s;
        }}
        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_message_buffer_length 20;
            nchan_message_timeout 5m;
        }}
    }}
}}
"""


def find_nginx() -> tuple[str, Path] | None:
    """nginx and its nchan module, or None when either is missing."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    module = next((p for p in MODULE_PATHS if p.exists()), None)
    if nginx is None or module is None:
        return None
    return nginx, module


class NchanServer:
    """nginx with Nchan on a free loopback port, in a folder of its own."""

    def __init__(self, workers: int, say: Callable[[str], None]) -> None:
        found = find_nginx()
        if found is None:
            raise RuntimeError(f"Nchan is not installed: {INSTALL_HINT}")
        self.nginx, self.module = found
        self.workers = workers
        self.say = say
        self.port = 0
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="messenger-nchan-"))
        self.port = free_port()
        config = self.root / "nginx.conf"
        config.write_text(
            CONFIG.format(
                workers=self.workers,
                root=self.root,
                module=self.module,
                port=self.port,
                timeout=POLL_TIMEOUT_SECS,
            )
        )
        with open(self.root / "stderr.log", "wb") as stderr:
            self._proc = subprocess.Popen(
                [self.nginx, "-p", str(self.root), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self._log_tail()}")
            if len(procs.child_pids(self._proc.pid)) >= self.workers:
                probe = Connection(self.port, timeout_secs=2)
                try:
                    probe.request("GET", "/pub/probe")
                    self.say(f"[nchan] nginx with Nchan on 127.0.0.1:{self.port}")
                    return
                except TransportError:
                    pass
                finally:
                    probe.close()
            gevent.sleep(0.1)
        raise RuntimeError(f"nginx did not serve in time: {self._log_tail()}")

    def pids(self) -> list[int]:
        return procs.process_tree(self._proc.pid) if self._proc is not None else []

    def stop(self) -> None:
        """Stop nginx (a fast shutdown) and remove its folder; never raises."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _log_tail(self) -> str:
        if self.root is None:
            return ""
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-1500:])
        return "\n".join(parts)


def subscribe_loop(
    port: int,
    channel: str,
    stats: PollStats,
    on_message: Callable[[float, dict[str, Any]], None],
) -> None:
    """A long-poll subscriber of one channel, re-polling at once; ends when killed.

    Like harness.poll_loop: the same client, the same timeout, the same backoff.
    """
    conn = Connection(port, timeout_secs=POLL_TIMEOUT_SECS + 15)
    since: dict[str, str] = {}
    failures = 0
    try:
        while True:
            timed = timed_request(
                conn, stats, failures, f"/sub/{channel}", headers=since
            )
            if timed is None:
                failures += 1
                continue
            response, sent, arrived = timed
            if response.status in (304, 408):  # the long poll's timeout
                stats.answers += 1
                if arrived - sent < POLL_TIMEOUT_SECS - EARLY_ANSWER_MARGIN_SECS:
                    stats.early_answers += 1
                continue
            if response.status != 200:
                stats.errors += 1
                stats.last_error = f"subscribe answered {response.status}"
                gevent.sleep(backoff_secs(failures))
                failures += 1
                continue
            failures = 0
            stats.answers += 1
            since = {
                "If-Modified-Since": response.headers.get("last-modified", ""),
                "If-None-Match": response.headers.get("etag", ""),
            }
            on_message(arrived, response.json())
    finally:
        conn.close()


def _publish(conn: Connection, channel: str, message_id: str) -> None:
    response = conn.request(
        "POST", f"/pub/{channel}", body={"client_msg_id": message_id, "body": BODY}
    )
    if response.status not in (200, 201, 202):
        raise TransportError(f"publish answered {response.status}")


def _measured(meter: procs.CpuMeter, into: dict[str, Any]) -> Callable[[], None]:
    start = meter.snapshot()

    def done() -> None:
        into["cpu"] = procs.CpuMeter.percent(start, meter.snapshot())

    return done


def _open(
    port: int,
    channels: list[str],
    stats: PollStats,
    on_message: Callable[[str], Callable[[float, dict[str, Any]], None]],
) -> list[gevent.Greenlet]:
    greenlets = [
        gevent.spawn(subscribe_loop, port, ch, stats, on_message(ch)) for ch in channels
    ]
    wait_until(lambda: holds_at_least(stats, len(channels)), OPEN_TIMEOUT_SECS)
    settle(stats, 1.0, 10.0)
    return greenlets


def run_wake(server: NchanServer, plan: Plan, run_tag: str) -> dict[str, Any]:
    """Subscribers on distinct channels; publishes to random ones at the plan's
    rate; publish start → subscriber answer."""
    meter = procs.CpuMeter(lambda: {"server": server.pids()})
    channels = [f"w{run_tag}{i}" for i in range(plan.wake_users)]
    started: dict[str, float] = {}
    latencies_ms: list[float] = []
    stats = PollStats()

    def listener(channel: str) -> Callable[[float, dict[str, Any]], None]:
        def on_message(arrived: float, message: dict[str, Any]) -> None:
            t0 = started.pop(message.get("client_msg_id", ""), None)
            if t0 is not None:
                latencies_ms.append((arrived - t0) * 1000)

        return on_message

    greenlets = _open(server.port, channels, stats, listener)
    result: dict[str, Any] = {"users": len(channels), "held": stats.in_flight}
    total = int(plan.wake_rate_per_sec * plan.wake_secs)
    publishers = gevent.pool.Pool(100)
    errors = [0]
    rng = random.Random(7)

    pool = ConnectionPool(server.port, 100)

    def publish(k: int) -> None:
        message_id = f"nw-{run_tag}-{k}"
        started[message_id] = time.perf_counter()
        try:
            with pool.connection() as conn:
                _publish(conn, rng.choice(channels), message_id)
        except TransportError:
            errors[0] += 1
            started.pop(message_id, None)

    try:
        done = _measured(meter, result)
        t_start = time.monotonic()
        for k in range(total):
            delay = t_start + k / plan.wake_rate_per_sec - time.monotonic()
            if delay > 0:
                gevent.sleep(delay)
            publishers.spawn(publish, k)
        publishers.join(timeout=30)
        wait_until(lambda: not started, plan.drain_timeout_secs)
        done()
    finally:
        gevent.killall(greenlets, timeout=10)
        pool.close()
    result.update(
        sent=total,
        delivered=len(latencies_ms),
        lost=total - len(latencies_ms) - errors[0],
        errors=errors[0] + stats.errors,
        latency_ms=distribution(latencies_ms) if latencies_ms else {},
    )
    return result


def run_fanout(
    server: NchanServer, plan: Plan, run_tag: str, size: int
) -> dict[str, Any]:
    """size subscribers of one channel; time until all have each publish."""
    meter = procs.CpuMeter(lambda: {"server": server.pids()})
    channel = f"f{run_tag}{size}"
    stats = PollStats()
    waiting: dict[str, set[int]] = {}
    latest: dict[str, float] = {}
    done_events: dict[str, gevent.event.Event] = {}
    sent_at: dict[str, float] = {}

    def listener_for(index: int) -> Callable[[float, dict[str, Any]], None]:
        def on_message(arrived: float, message: dict[str, Any]) -> None:
            message_id = message.get("client_msg_id", "")
            left = waiting.get(message_id)
            if left is not None and index in left:
                left.discard(index)
                latest[message_id] = arrived
                if not left:
                    done_events[message_id].set()

        return on_message

    greenlets = [
        gevent.spawn(subscribe_loop, server.port, channel, stats, listener_for(i))
        for i in range(size)
    ]
    all_have_it_ms: list[float] = []
    missing = 0
    result: dict[str, Any] = {"members": size, "messages": plan.fanout_messages}
    try:
        wait_until(lambda: holds_at_least(stats, size), OPEN_TIMEOUT_SECS)
        settle(stats, 1.0, 10.0)
        result["held"] = stats.in_flight
        conn = Connection(server.port)
        done = _measured(meter, result)
        for k in range(plan.fanout_messages):
            message_id = f"nf-{run_tag}-{size}-{k}"
            waiting[message_id] = set(range(size))
            done_events[message_id] = gevent.event.Event()
            sent_at[message_id] = time.perf_counter()
            _publish(conn, channel, message_id)
            done_events[message_id].wait(timeout=plan.drain_timeout_secs)
            if waiting[message_id]:
                missing += len(waiting[message_id])
            else:
                all_have_it_ms.append((latest[message_id] - sent_at[message_id]) * 1000)
            gevent.sleep(0.2)
        done()
        conn.close()
    finally:
        gevent.killall(greenlets, timeout=10)
    result.update(
        missing=missing,
        errors=stats.errors,
        all_have_it_ms=distribution(all_have_it_ms) if all_have_it_ms else {},
    )
    return result


def run_idle(server: NchanServer, plan: Plan, run_tag: str) -> dict[str, Any]:
    """The plan's largest idle level of held subscriptions: nginx's CPU while
    holding them."""
    level = max(plan.idle_levels)
    meter = procs.CpuMeter(lambda: {"server": server.pids()})
    stats = PollStats()
    channels = [f"i{run_tag}{i}" for i in range(level)]
    greenlets: list[gevent.Greenlet] = []
    result: dict[str, Any] = {"polls": level}
    try:
        t0 = time.monotonic()
        for i, channel in enumerate(channels):
            due = t0 + i / plan.idle_ramp_per_sec
            if due > time.monotonic():
                gevent.sleep(due - time.monotonic())
            greenlets.append(
                gevent.spawn(
                    subscribe_loop, server.port, channel, stats, lambda a, m: None
                )
            )
        wait_until(lambda: holds_at_least(stats, level), OPEN_TIMEOUT_SECS)
        gevent.sleep(plan.idle_settle_secs)
        result["held"] = stats.in_flight
        done = _measured(meter, result)
        gevent.sleep(plan.idle_cpu_window_secs)
        done()
    finally:
        gevent.killall(greenlets, timeout=10)
    result.update(errors=stats.errors, server_cpu_pct=result["cpu"]["server"])
    return result


def run_all(
    plan: Plan,
    scenarios: list[str],
    run_tag: str,
    workers: int,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The wake, fan-out and idle scenarios (those chosen) against Nchan."""
    server = NchanServer(workers, say)
    results: dict[str, Any] = {"workers": workers}
    try:
        server.start()
        if "idle" in scenarios:
            say("[nchan] idle")
            results["idle"] = run_idle(server, plan, run_tag)
        if "wake" in scenarios:
            say("[nchan] wake")
            results["wake"] = run_wake(server, plan, run_tag)
        if "fanout" in scenarios:
            results["fanout"] = {"sizes": []}
            for size in plan.fanout_sizes:
                say(f"[nchan] fanout {size}")
                results["fanout"]["sizes"].append(
                    run_fanout(server, plan, run_tag, size)
                )
    finally:
        server.stop()
    return results
