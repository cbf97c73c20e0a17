"""gunicorn settings for the messenger: gevent workers holding many long polls.

Read by `gunicorn -c gunicorn.conf.py wsgi:app`; values come from MESSENGER_*
variables (see the README's configuration table).
"""

import contextlib
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from messenger.settings import ConfigError, load

try:
    _settings = load()
except ConfigError as exc:
    print(f"messenger: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)

# Metrics of every worker: prometheus_client picks its storage when first
# imported, which happens in the workers (importing messenger.settings above
# doesn't), so the folder must be in the environment before they start. Each
# worker writes its own files there; /metrics adds them up.
_own_metrics_dir = _settings.metrics_dir is None
_metrics_dir = _settings.metrics_dir or Path(
    tempfile.mkdtemp(prefix="messenger-metrics-")
)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)
os.environ["MESSENGER_METRICS_DIR"] = str(_metrics_dir)  # the workers' settings

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers or multiprocessing.cpu_count()
worker_class = "gevent"
# Each held long poll is one greenlet and one socket; 10,000+ per worker must fit.
worker_connections = 12_000
# The gevent worker's heartbeat, not a request limit: held polls don't block it.
timeout = 30
# On SIGTERM held polls are answered at once (see post_worker_init); this only
# bounds requests that are still running after that.
graceful_timeout = 20
# Clients re-poll on the same connection right after an answer; keep it open
# longer than the longest poll so they don't reconnect every time.
keepalive = _settings.poll_timeout_max_secs + 10
# Request line, header count and header size bounds (hostile clients).
limit_request_line = 4094
limit_request_fields = 64
limit_request_field_size = 8190
# gunicorn 25.1+ opens a control socket at one path per user by default: two
# servers on one machine (tests, benchmarks) would fight over it.
control_socket_disable = True
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "messenger"


def on_starting(server):  # type: ignore[no-untyped-def]
    """Raise the open-file soft limit to the hard limit: one socket per held poll.

    Start the metrics from zero: files of an earlier run would be added in.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in _metrics_dir.glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    """A dead worker's held polls no longer count (its counters still do)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(_metrics_dir))


def on_exit(server):  # type: ignore[no-untyped-def]
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def _drain() -> None:
    from messenger import runtime

    with contextlib.suppress(RuntimeError):  # no runtime: nothing is held
        runtime.get().hub.drain()


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """On SIGTERM, answer every held poll now instead of letting them time out."""
    import gevent

    connections: dict = {}  # type: ignore[type-arg]  # greenlet → its client socket
    busy: set = set()  # type: ignore[type-arg]  # greenlets inside a request

    def close_idle() -> None:
        # Idle keep-alive connections would hold the worker until graceful_timeout;
        # shutting their sockets down ends them as a client hang-up would.
        for greenlet, client in list(connections.items()):
            if greenlet not in busy:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RDWR)

    def handle_term(sig, frame):  # type: ignore[no-untyped-def]
        worker.alive = False
        gevent.spawn(_drain)
        gevent.spawn_later(0.2, close_idle)

    # SIGTERM (graceful stop), and SIGINT/SIGQUIT too (Ctrl-C in a terminal reaches
    # the workers directly, and the master forwards SIGQUIT): gunicorn's own quick
    # exit would drop held polls and print a SystemExit traceback per worker.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, handle_term)

    handle = worker.handle
    handle_request = worker.handle_request

    def tracked_handle(listener, client, addr):  # type: ignore[no-untyped-def]
        connections[gevent.getcurrent()] = client
        try:
            return handle(listener, client, addr)
        finally:
            connections.pop(gevent.getcurrent(), None)

    def close_when_stopping(*args):  # type: ignore[no-untyped-def]
        # gunicorn decides keep-alive when a request starts: a poll answered by
        # the drain started while the worker was alive.
        busy.add(gevent.getcurrent())
        try:
            keep_alive = handle_request(*args)
        finally:
            busy.discard(gevent.getcurrent())
        if not worker.alive:
            raise StopIteration
        return keep_alive

    worker.handle = tracked_handle
    worker.handle_request = close_when_stopping


def worker_int(worker):  # type: ignore[no-untyped-def]
    _drain()
