"""The push worker (`messenger push-worker`): delivers push jobs to devices.

The queue lives in Redis (key names in realtime/keys.py, all under the {push}
hash tag):

    pending:<user>:<conv>  messages being coalesced (services/push.py appends)
    due                    batches by due time: "<user>:<conv>" → unix time
    queue                  jobs ready now
    processing:<worker>    jobs a worker took (BLMOVE from queue) and has not finished
    retry                  jobs waiting for their next attempt, by time
    dead                   jobs that failed their last attempt (newest first)

Every move is atomic (a Lua script, BLMOVE, or one MULTI), so a job is in exactly
one place at any moment: BLMOVE hands it to one worker, which is why several
workers never send the same job twice in the normal case. A worker that dies
leaves its jobs in its processing list; any worker requeues them once the dead
worker's heartbeat has expired, and at once when it runs on the same host and the
dead worker's process is gone (a restart after a crash). A job whose worker died
after the receiver accepted it but before the worker recorded that is delivered
again: delivery is at least once, and receivers may see a rare duplicate (same
messages, fresh signature).

A job carries the previews of its messages, the attempt count and, after a
failure, the one device it is still for:

    {"job_id": 7, "user_id": 12, "conversation_id": 9, "attempt": 0,
     "device_id": null, "messages": [Message preview, ...]}

Update PROMOTE (which writes new jobs) and Job when adding a field.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

import gevent
import gevent.event
import redis

from messenger import logs, metrics, runtime
from messenger.errors import Unavailable
from messenger.models import Device
from messenger.realtime import keys
from messenger.realtime.connections import blocking_client
from messenger.runtime import Runtime
from messenger.services import devices
from messenger.services.push import build_push
from messenger.services.push_providers import DeliveryResult, providers
from messenger.settings import Settings

logger = logging.getLogger(__name__)

# Due batches and retries are moved to the queue this often: the latency a
# coalescing window or a backoff gains at most.
PROMOTE_EVERY_SECS = 0.2
# Batches and retries moved per script call (one call must stay short: Redis runs
# nothing else meanwhile).
PROMOTE_LIMIT = 500
REAP_EVERY_SECS = 5.0
# A consumer's BLMOVE returns this often when idle, so a stopping worker notices.
CONSUME_BLOCK_SECS = 1.0
# The longest block process_one accepts (its connection's socket timeout is above).
MAX_BLOCK_SECS = 30.0
# Backoff between attempts never exceeds this, whatever the attempt number.
BACKOFF_MAX_SECS = 600.0
# A job whose user's shard is down waits this long; no attempt is spent on it.
DB_RETRY_SECS = 5.0
REDIS_BACKOFF_MAX_SECS = 5.0

# Moves due batches (building their jobs) and due retries onto the queue.
# KEYS: due, retry, queue, job ids. ARGV: now, limit, pending key prefix.
PROMOTE = """
local moved = 0
local batches = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1],
                           'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(batches) do
  redis.call('ZREM', KEYS[1], member)
  local pending = ARGV[3] .. member
  local items = redis.call('LRANGE', pending, 0, -1)
  redis.call('DEL', pending)
  if #items > 0 then
    local sep = string.find(member, ':', 1, true)
    local job_id = redis.call('INCR', KEYS[4])
    redis.call('LPUSH', KEYS[3], '{"job_id":' .. string.format('%d', job_id)
      .. ',"user_id":' .. string.sub(member, 1, sep - 1)
      .. ',"conversation_id":' .. string.sub(member, sep + 1)
      .. ',"attempt":0,"device_id":null,"messages":['
      .. table.concat(items, ',') .. ']}')
    moved = moved + 1
  end
end
local retries = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1],
                           'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(retries) do
  redis.call('ZREM', KEYS[2], job)
  redis.call('LPUSH', KEYS[3], job)
  moved = moved + 1
end
return moved
"""

# Puts a dead worker's unfinished jobs back at the head of the queue.
# KEYS: its processing list, queue.
REQUEUE = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT') do
  n = n + 1
end
return n
"""

# Workers of this process that are running: another with the same host and pid
# is an earlier life of this process (a restarted container's pid 1), not a
# sibling.
_LOCAL_WORKERS: set[str] = set()


@dataclass(frozen=True)
class Job:
    job_id: int
    user_id: int
    conversation_id: int
    attempt: int
    device_id: int | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def parse(cls, raw: bytes | str) -> Job:
        """Raises ValueError for anything that is not a job."""
        try:
            data = json.loads(raw)
            return cls(
                int(data["job_id"]),
                int(data["user_id"]),
                int(data["conversation_id"]),
                int(data["attempt"]),
                None if data.get("device_id") is None else int(data["device_id"]),
                list(data["messages"]),
                data.get("error"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a push job: {exc!r}") from None

    def to_json(self, **extra: Any) -> str:
        data: dict[str, Any] = {
            "job_id": self.job_id,
            "user_id": self.user_id,
            "conversation_id": self.conversation_id,
            "attempt": self.attempt,
            "device_id": self.device_id,
            "messages": self.messages,
        }
        if self.error is not None:
            data["error"] = self.error
        data.update(extra)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def backoff_secs(attempt: int, base_secs: float, retry_after: float | None) -> float:
    """The wait after the attempt-th failure: exponential, capped, jittered
    (half fixed, half random, so failed jobs don't retry in lockstep)."""
    delay = min(BACKOFF_MAX_SECS, base_secs * 2 ** max(0, attempt - 1))
    delay = delay / 2 + random.uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, min(retry_after, BACKOFF_MAX_SECS))
    return delay


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Pusher:
    """One push worker. `run()` serves until `stop()`; tests drive the steps
    (`start_up`, `promote`, `process_one`, `shut_down`) one at a time."""

    def __init__(
        self, rt: Runtime, *, worker_id: str | None = None, concurrency: int = 0
    ) -> None:
        self.rt = rt
        self.settings: Settings = rt.settings
        self.redis = rt.redis
        self.worker_id = worker_id or new_worker_id()
        self.processing = keys.push_processing(self.worker_id)
        self.concurrency = concurrency or self.settings.push_concurrency
        self.providers = providers(self.settings)
        self._promote = self.redis.register_script(PROMOTE)
        self._requeue = self.redis.register_script(REQUEUE)
        self._client: redis.Redis | None = None
        self._stopping = gevent.event.Event()
        # Jobs this worker's consumers are handling, and processing-list items no
        # consumer was handling at the last look (see recover_strays).
        self._inflight: set[bytes] = set()
        self._strays: set[bytes] = set()

    # ---- life ---------------------------------------------------------------------

    def start_up(self) -> int:
        """Announce this worker, requeue jobs of dead ones (left by a crash), and
        rebuild the device flags if Redis lost them. Returns jobs requeued."""
        _LOCAL_WORKERS.add(self.worker_id)
        self.heartbeat()
        requeued = self.reap()
        self.check_flags()
        return requeued

    def shut_down(self) -> int:
        """Put this worker's unfinished jobs back on the queue and leave."""
        _LOCAL_WORKERS.discard(self.worker_id)
        requeued = int(self._requeue(keys=[self.processing, keys.PUSH_QUEUE]))
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(keys.PUSH_WORKERS, self.worker_id)
        pipe.delete(keys.push_alive(self.worker_id))
        pipe.execute()
        if self._client is not None:
            self._client.close()
            self._client = None
        if requeued:
            logger.info("push worker %s: requeued %d jobs", self.worker_id, requeued)
        return requeued

    def heartbeat(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.push_alive(self.worker_id), 1, ex=keys.PUSH_HEARTBEAT_TTL_SECS)
        pipe.sadd(keys.PUSH_WORKERS, self.worker_id)
        pipe.execute()

    def reap(self) -> int:
        """Requeue the jobs of every dead worker; returns how many."""
        requeued = 0
        for raw in self.redis.smembers(keys.PUSH_WORKERS):
            worker_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            if worker_id == self.worker_id or not self._is_dead(worker_id):
                continue
            moved = int(
                self._requeue(keys=[keys.push_processing(worker_id), keys.PUSH_QUEUE])
            )
            self.redis.srem(keys.PUSH_WORKERS, worker_id)
            if moved:
                logger.warning(
                    "push worker %s: requeued %d jobs of dead worker %s",
                    self.worker_id,
                    moved,
                    worker_id,
                )
            requeued += moved
        return requeued

    def _is_dead(self, worker_id: str) -> bool:
        if worker_id in _LOCAL_WORKERS:
            return False
        if not self.redis.exists(keys.push_alive(worker_id)):
            return True
        host, _, rest = worker_id.rpartition(":")[0].rpartition(":")
        if host != socket.gethostname() or not rest.isdigit():
            return False  # another host: trust its heartbeat
        pid = int(rest)
        return pid == os.getpid() or not _pid_running(pid)

    def recover_strays(self) -> int:
        """Requeue jobs in this worker's processing list that no consumer is
        handling, seen so at two looks in a row (a consumer failed between
        taking a job and handling it: Redis answered the BLMOVE too late).
        Returns how many."""
        listed = self.redis.lrange(self.processing, 0, -1)
        items = {r if isinstance(r, bytes) else r.encode() for r in listed}
        items -= self._inflight
        stale, self._strays = items & self._strays, items - self._strays
        for raw in stale:
            pipe = self.redis.pipeline(transaction=True)
            pipe.lrem(self.processing, 1, raw)  # type: ignore[arg-type]
            pipe.rpush(keys.PUSH_QUEUE, raw)
            pipe.execute()
        if stale:
            logger.warning(
                "push worker %s: requeued %d stray jobs", self.worker_id, len(stale)
            )
        return len(stale)

    def check_flags(self) -> None:
        """Rebuild the users' device flags when Redis has lost them."""
        if self.redis.exists(keys.PUSH_FLAGS_SYNCED):
            return
        users = devices.resync_flags()
        logger.info("push: device flags rebuilt for %d users", users)

    def queue_depth(self) -> int:
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(keys.PUSH_QUEUE)
        pipe.zcard(keys.PUSH_RETRY)
        pipe.zcard(keys.PUSH_DUE)
        depth = sum(int(n) for n in pipe.execute())
        metrics.PUSH_QUEUE_DEPTH.set(depth)
        return depth

    # ---- the queue ----------------------------------------------------------------

    def promote(self, now: float | None = None) -> int:
        """Turn due batches into jobs and put due retries back; returns how many."""
        return int(
            self._promote(
                keys=[
                    keys.PUSH_DUE,
                    keys.PUSH_RETRY,
                    keys.PUSH_QUEUE,
                    keys.PUSH_JOB_IDS,
                ],
                args=[
                    time.time() if now is None else now,
                    PROMOTE_LIMIT,
                    keys.PUSH_PENDING_PREFIX,
                ],
            )
        )

    def process_one(
        self, timeout_secs: float = 0, client: redis.Redis | None = None
    ) -> bool:
        """Take one job (waiting up to timeout_secs) and deliver it.

        Returns False when no job came.
        """
        if timeout_secs <= 0:
            raw = self.redis.lmove(keys.PUSH_QUEUE, self.processing, "RIGHT", "LEFT")
        else:
            if client is None:
                if self._client is None:
                    self._client = blocking_client(
                        self.settings.redis_url or "", MAX_BLOCK_SECS
                    )
                client = self._client
            raw = client.blmove(
                keys.PUSH_QUEUE,
                self.processing,
                min(timeout_secs, MAX_BLOCK_SECS),  # type: ignore[arg-type]
                "RIGHT",
                "LEFT",
            )
        if raw is None:
            return False
        job = raw if isinstance(raw, bytes) else str(raw).encode()
        self._inflight.add(job)
        try:
            self.handle(job)
        finally:
            self._inflight.discard(job)
        return True

    def handle(self, raw: bytes) -> None:
        """Deliver one job taken into this worker's processing list, then move it
        on: done, retried later per failing device, or dead-lettered."""
        try:
            job = Job.parse(raw)
        except ValueError as exc:
            logger.error("push: dropping a malformed job to the dead letters: %s", exc)
            self._finish(raw, dead=[raw.decode("utf-8", "replace")])
            return
        try:
            self._deliver(raw, job)
        except Exception as exc:  # noqa: BLE001 - a bug must not wedge the job
            logger.exception("push job %s: delivery failed unexpectedly", job.job_id)
            self._finish(
                raw,
                dead=[job.to_json(error=f"internal: {exc.__class__.__name__}")],
            )

    def _deliver(self, raw: bytes, job: Job) -> None:
        try:
            targets = self._devices(job)
        except Unavailable:
            # Not the device's fault: wait for the shard without spending an attempt.
            logger.warning(
                "push job %s: user %s's shard is down; retrying later",
                job.job_id,
                job.user_id,
            )
            self._finish(raw, retries=[(job.to_json(), time.time() + DB_RETRY_SECS)])
            return
        if not targets:
            metrics.PUSH_DELIVERIES.labels(outcome="no_device").inc()
            self._finish(raw)
            return
        push = build_push(job.user_id, job.conversation_id, job.messages)
        retries: list[tuple[str, float]] = []
        dead: list[str] = []
        for device in targets:
            result = self._send(device, push)
            outcome = self._file(job, device, result, retries, dead)
            metrics.PUSH_DELIVERIES.labels(outcome=outcome).inc()
        self._finish(raw, retries=retries, dead=dead)

    def _file(
        self,
        job: Job,
        device: Device,
        result: DeliveryResult,
        retries: list[tuple[str, float]],
        dead: list[str],
    ) -> str:
        """Act on one device's result; returns the outcome for the metrics."""
        if result.outcome == "delivered":
            logger.info(
                "push job %s: delivered to user %s device %s (%d messages)",
                job.job_id,
                job.user_id,
                device.device_id,
                len(job.messages),
            )
            return "delivered"
        if result.outcome == "gone":
            self._remove(device)
            return "gone"
        tries = job.attempt + 1
        later = replace(
            job, attempt=tries, device_id=device.device_id, error=result.detail
        )
        if result.outcome == "retry" and tries < self.settings.push_max_attempts:
            delay = backoff_secs(
                tries, self.settings.push_backoff_base_secs, result.retry_after_secs
            )
            retries.append((later.to_json(), time.time() + delay))
            logger.info(
                "push job %s: device %s failed (%s); attempt %d in %.1f s",
                job.job_id,
                device.device_id,
                result.detail,
                tries + 1,
                delay,
            )
            return "retry"
        dead.append(later.to_json(dead_at=int(time.time())))
        logger.warning(
            "push job %s: user %s device %s dead-lettered after %d attempts: %s",
            job.job_id,
            job.user_id,
            device.device_id,
            tries,
            result.detail,
        )
        return "dead"

    def _devices(self, job: Job) -> list[Device]:
        found = devices.list_devices(job.user_id)
        if job.device_id is not None:
            found = [d for d in found if d.device_id == job.device_id]
        return found

    def _send(self, device: Device, push: dict[str, Any]) -> DeliveryResult:
        provider = self.providers.get(device.kind)
        if provider is None:
            return DeliveryResult("rejected", detail=f"no provider for {device.kind}")
        return provider.deliver(device, push)

    def _remove(self, device: Device) -> None:
        try:
            devices.remove_gone(device.user_id, device.device_id)
        except Unavailable:
            # It answers 404/410 again next time, and is removed then.
            logger.warning(
                "push: device %s is gone but its shard is down", device.device_id
            )

    def _finish(
        self,
        raw: bytes,
        retries: list[tuple[str, float]] | None = None,
        dead: list[str] | None = None,
    ) -> None:
        """Take the job out of processing and file what is left, in one MULTI.

        While Redis is down this waits for it: the job stays in the processing
        list meanwhile, so a worker stopped now leaves it to be requeued.
        """
        backoff = 0.1
        while True:
            pipe = self.redis.pipeline(transaction=True)
            pipe.lrem(self.processing, 1, raw)  # type: ignore[arg-type]
            if retries:
                pipe.zadd(keys.PUSH_RETRY, dict(retries))
            if dead:
                pipe.lpush(keys.PUSH_DEAD, *dead)
                pipe.ltrim(keys.PUSH_DEAD, 0, keys.PUSH_DEAD_MAX - 1)
            try:
                pipe.execute()
                return
            except redis.RedisError as exc:
                metrics.REDIS_ERRORS.labels(op="push_finish").inc()
                if self._stopping.is_set():
                    raise
                logger.warning("push worker %s: %s; retrying", self.worker_id, exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, REDIS_BACKOFF_MAX_SECS)

    # ---- serving ------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stop(): one maintenance loop and `concurrency` consumers."""
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                requeued = self.start_up()
                break
            except (redis.RedisError, Unavailable) as exc:
                metrics.REDIS_ERRORS.labels(op="push_start").inc()
                logger.warning("push worker: cannot start yet: %s", exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, REDIS_BACKOFF_MAX_SECS)
        else:
            return
        logger.info(
            "push worker %s: serving with %d consumers (%d jobs requeued)",
            self.worker_id,
            self.concurrency,
            requeued,
        )
        maintainer = gevent.spawn(self._maintain)
        consumers = [gevent.spawn(self._consume) for _ in range(self.concurrency)]
        self._stopping.wait()
        # Jobs being delivered finish (each is bounded by its timeouts); the rest
        # are killed and their jobs requeued below.
        gevent.joinall(consumers, timeout=self.settings.push_timeout_secs * 3 + 2)
        gevent.killall([maintainer, *consumers], timeout=2)
        try:
            self.shut_down()
        except redis.RedisError as exc:
            logger.warning(
                "push worker %s: left without requeueing: %s", self.worker_id, exc
            )
        logger.info("push worker %s: stopped", self.worker_id)

    def stop(self) -> None:
        self._stopping.set()

    def _maintain(self) -> None:
        next_beat = next_reap = 0.0
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                now = time.monotonic()
                if now >= next_beat:
                    self.heartbeat()
                    next_beat = now + keys.PUSH_HEARTBEAT_SECS
                if now >= next_reap:
                    self.reap()
                    self.recover_strays()
                    self.check_flags()
                    self.queue_depth()
                    next_reap = now + REAP_EVERY_SECS
                self.promote()
                backoff = 0.1
                wait = PROMOTE_EVERY_SECS
            except (redis.RedisError, Unavailable) as exc:
                metrics.REDIS_ERRORS.labels(op="push_maintain").inc()
                logger.warning("push worker %s: %s", self.worker_id, exc)
                wait, backoff = backoff, min(backoff * 2, REDIS_BACKOFF_MAX_SECS)
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                logger.exception("push worker %s: maintenance failed", self.worker_id)
                wait = REDIS_BACKOFF_MAX_SECS
            self._stopping.wait(wait)

    def _consume(self) -> None:
        client = blocking_client(self.settings.redis_url or "", CONSUME_BLOCK_SECS)
        backoff = 0.1
        try:
            while not self._stopping.is_set():
                try:
                    self.process_one(CONSUME_BLOCK_SECS, client)
                    backoff = 0.1
                except redis.RedisError as exc:
                    metrics.REDIS_ERRORS.labels(op="push_consume").inc()
                    logger.warning("push worker %s: %s", self.worker_id, exc)
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, REDIS_BACKOFF_MAX_SECS)
        finally:
            client.close()


def main(settings: Settings) -> int:
    """`messenger push-worker`: serve until SIGTERM or SIGINT."""
    logs.setup(settings.log_level, settings.log_json)
    rt = runtime.build(settings)
    runtime.install(rt)
    pusher = Pusher(rt)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, pusher.stop)
    try:
        pusher.run()
    finally:
        rt.close()
    return 0
