"""The push job queue in Redis: one push worker's hold on it.

The keys (names in realtime/keys.py, all under the {push} hash tag):

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
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis

from messenger.backoff import backoff_secs
from messenger.realtime import keys
from messenger.realtime.connections import blocking_client

logger = logging.getLogger(__name__)

# Batches and retries moved per script call (one call must stay short: Redis runs
# nothing else meanwhile).
PROMOTE_LIMIT = 500
# The longest block take() accepts (its connection's socket timeout is above).
MAX_BLOCK_SECS = 30.0
# Backoff between a job's attempts never exceeds this, whatever the attempt number.
BACKOFF_MAX_SECS = 600.0
# Half of each wait between a job's attempts is fixed and half random, so jobs
# that failed together (a receiver's outage) don't retry in lockstep.
RETRY_JITTER = (0.5, 1.0)

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


def retry_delay_secs(
    attempt: int, base_secs: float, retry_after_secs: float | None
) -> float:
    """The wait before a job's next try after its attempt-th failed one: from
    base_secs, doubling, at most BACKOFF_MAX_SECS, jittered, and never shorter
    than the receiver's Retry-After (capped the same)."""
    return backoff_secs(
        attempt,
        base_secs,
        BACKOFF_MAX_SECS,
        jitter=RETRY_JITTER,
        retry_after_secs=retry_after_secs,
    )


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class PushQueue:
    """One worker's end of the queue: announce and leave, take jobs into its
    processing list, file them when done, and requeue what dead workers (or its
    own failed consumers) left behind. Raises redis.RedisError when Redis fails;
    retrying is the caller's decision."""

    def __init__(
        self, client: redis.Redis, redis_url: str, worker_id: str | None = None
    ) -> None:
        self.redis = client
        self.redis_url = redis_url
        self.worker_id = worker_id or new_worker_id()
        self.processing = keys.push_processing(self.worker_id)
        self._promote = client.register_script(PROMOTE)
        self._requeue = client.register_script(REQUEUE)
        self._blocking: redis.Redis | None = None
        # Processing-list items no consumer was handling at the last look.
        self._strays: set[bytes] = set()

    # ---- membership ---------------------------------------------------------------

    def join(self) -> int:
        """Announce this worker and requeue the jobs of dead ones (left by a
        crash). Returns jobs requeued."""
        _LOCAL_WORKERS.add(self.worker_id)
        self.heartbeat()
        return self.reap()

    def leave(self) -> int:
        """Put this worker's unfinished jobs back on the queue and leave; returns
        how many."""
        _LOCAL_WORKERS.discard(self.worker_id)
        requeued = int(self._requeue(keys=[self.processing, keys.PUSH_QUEUE]))
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(keys.PUSH_WORKERS, self.worker_id)
        pipe.delete(keys.push_alive(self.worker_id))
        pipe.execute()
        if self._blocking is not None:
            self._blocking.close()
            self._blocking = None
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
        return pid == os.getpid() or not psutil.pid_exists(pid)

    def recover_strays(self, inflight: set[bytes]) -> int:
        """Requeue jobs in this worker's processing list that no consumer is
        handling (not in `inflight`), seen so at two looks in a row (a consumer
        failed between taking a job and handling it: Redis answered the BLMOVE
        too late). Returns how many."""
        listed = self.redis.lrange(self.processing, 0, -1)
        items = {r if isinstance(r, bytes) else r.encode() for r in listed}
        items -= inflight
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

    def depth(self) -> int:
        """Jobs ready, waiting for a retry, and batches waiting for their time."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(keys.PUSH_QUEUE)
        pipe.zcard(keys.PUSH_RETRY)
        pipe.zcard(keys.PUSH_DUE)
        return sum(int(n) for n in pipe.execute())

    # ---- jobs ---------------------------------------------------------------------

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

    def take(
        self, timeout_secs: float = 0, client: redis.Redis | None = None
    ) -> bytes | None:
        """Move the oldest ready job into this worker's processing list, waiting
        up to timeout_secs for one (on `client`, a blocking connection, or one of
        this queue's own). Returns None when none came."""
        if timeout_secs <= 0:
            raw = self.redis.lmove(keys.PUSH_QUEUE, self.processing, "RIGHT", "LEFT")
        else:
            if client is None:
                if self._blocking is None:
                    self._blocking = blocking_client(self.redis_url, MAX_BLOCK_SECS)
                client = self._blocking
            raw = client.blmove(
                keys.PUSH_QUEUE,
                self.processing,
                min(timeout_secs, MAX_BLOCK_SECS),  # type: ignore[arg-type]
                "RIGHT",
                "LEFT",
            )
        if raw is None:
            return None
        return raw if isinstance(raw, bytes) else str(raw).encode()

    def finish(
        self,
        raw: bytes,
        retries: list[tuple[str, float]] | None = None,
        dead: list[str] | None = None,
    ) -> None:
        """Take a job out of processing and file what is left of it, in one MULTI:
        `retries` (job JSON, unix time of the next attempt) to the retry set,
        `dead` to the dead letters (the newest PUSH_DEAD_MAX are kept)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrem(self.processing, 1, raw)  # type: ignore[arg-type]
        if retries:
            pipe.zadd(keys.PUSH_RETRY, dict(retries))
        if dead:
            pipe.lpush(keys.PUSH_DEAD, *dead)
            pipe.ltrim(keys.PUSH_DEAD, 0, keys.PUSH_DEAD_MAX - 1)
        pipe.execute()


def dead_letters(client: redis.Redis, limit: int) -> list[tuple[bytes, Job | None]]:
    """The newest `limit` dead-lettered jobs (raw, and parsed when it parses)."""
    found: list[tuple[bytes, Job | None]] = []
    items: list[bytes] = client.lrange(keys.PUSH_DEAD, 0, max(0, limit - 1))  # type: ignore[assignment]
    for raw in items:
        try:
            found.append((raw, Job.parse(raw)))
        except ValueError:
            found.append((raw, None))
    return found


def replay_dead(
    client: redis.Redis,
    limit: int,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Move up to `limit` dead-lettered jobs, oldest first, back onto the queue
    with their attempts reset (a job for one device stays for that device).

    Each job moves in one MULTI (removed from the dead letters, queued), so a
    crash midway loses none; something that is not a job stays where it is.
    Returns how many were queued again.
    """
    total = min(limit, int(client.llen(keys.PUSH_DEAD)))  # type: ignore[arg-type]
    moved = 0
    skipped = 0
    for index in range(total):
        raw = client.lindex(keys.PUSH_DEAD, -1 - skipped)
        if raw is None:
            break
        try:
            job = Job.parse(raw)  # type: ignore[arg-type]
        except ValueError:
            skipped += 1
            if progress is not None:
                progress(index + 1, total)
            continue
        replayed = Job(
            job.job_id,
            job.user_id,
            job.conversation_id,
            0,
            job.device_id,
            job.messages,
        ).to_json()
        pipe = client.pipeline(transaction=True)
        pipe.lrem(keys.PUSH_DEAD, -1, raw)  # type: ignore[arg-type]
        pipe.lpush(keys.PUSH_QUEUE, replayed)
        removed, _ = pipe.execute()
        if removed:
            moved += 1
        if progress is not None:
            progress(index + 1, total)
    return moved
