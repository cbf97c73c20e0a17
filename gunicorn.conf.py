"""gunicorn settings for the messenger: gevent workers holding many long polls.

Read by `gunicorn -c gunicorn.conf.py wsgi:app`; values come from MESSENGER_*
variables (see the README's configuration table).
"""

import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import psutil

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
# Every counted event writes to a memory-mapped file there: on a disk-backed
# file system the first write to a page after each writeback faults into the
# file system (ext4 starts a journal handle), which stalled a worker's event
# loop under load (issue 13's idle profile: 30 % of the samples in one inc).
# So the temporary folder is in memory (/dev/shm) where there is one, as the
# systemd unit's /run/messenger/metrics is.
_MEMORY_DIR = "/dev/shm"
# A folder of our own is named after this master's pid, so a later start removes
# those of masters that died without their on_exit (kill -9).
_PREFIX = "messenger-metrics-"


def _remove_folders_of_dead_masters(parent: str) -> None:
    for folder in Path(parent).glob(f"{_PREFIX}*-*"):
        pid = folder.name.removeprefix(_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


_own_metrics_dir = _settings.metrics_dir is None
if _own_metrics_dir:
    _parent = (
        _MEMORY_DIR
        if os.access(_MEMORY_DIR, os.W_OK | os.X_OK)
        else tempfile.gettempdir()
    )
    _remove_folders_of_dead_masters(_parent)
    _metrics_dir = Path(
        tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=_parent)
    )
else:
    _metrics_dir = Path(_settings.metrics_dir)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics_dir)
os.environ["MESSENGER_METRICS_DIR"] = str(_metrics_dir)  # the workers' settings

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers or multiprocessing.cpu_count()
# gunicorn's gevent worker serving HTTP with gevent.pywsgi (a quarter less CPU per
# answered poll than gunicorn's own HTTP code), answering held polls at once on
# SIGTERM, SIGINT and SIGQUIT and closing idle keep-alive connections (see
# messenger/server_worker.py; DrainingGeventWorker keeps gunicorn's HTTP code).
worker_class = "messenger.server_worker.DrainingPyWSGIWorker"
# Each held long poll is one greenlet and one socket; 10,000+ per worker must fit.
worker_connections = 12_000
# The gevent worker's heartbeat, not a request limit: held polls don't block it.
timeout = 30
# On SIGTERM held polls are answered at once (see worker_class); this only
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
