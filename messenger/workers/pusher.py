"""The push worker (`messenger push-worker`): delivers push jobs to devices.

Jobs come from the Redis queue (workers/push_queue.py: how a job is taken, filed
and recovered after a crash). For each one this worker finds the user's devices,
sends one HMAC-signed push per device through its provider, and files the outcome:
delivered, the device gone (removed), retried later for the device that failed
(with backoff, honouring Retry-After), or dead-lettered after the last attempt.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.event
import gevent.pool
import redis

from messenger import logs, metrics, runtime
from messenger.backoff import Backoff
from messenger.errors import Unavailable
from messenger.models import Device
from messenger.realtime import keys
from messenger.realtime.connections import blocking_client
from messenger.runtime import Runtime
from messenger.services import devices, push
from messenger.services.push_providers import DeliveryResult, providers
from messenger.settings import Settings
from messenger.workers.push_queue import Job, PushQueue, retry_delay_secs

logger = logging.getLogger(__name__)

# Due batches and retries are moved to the queue this often: the latency a
# coalescing window or a backoff gains at most.
PROMOTE_EVERY_SECS = 0.2
REAP_EVERY_SECS = 5.0
# A consumer's BLMOVE returns this often when idle, so a stopping worker notices.
CONSUME_BLOCK_SECS = 1.0
# A job whose user's shard is down waits this long; no attempt is spent on it.
DB_RETRY_SECS = 5.0
# While Redis fails, each loop of this worker tries again after 0.1 s, doubling
# up to 5 s: back within a blink after a restart, at most one try in 5 s during
# a long outage.
REDIS_RETRY_FIRST_SECS = 0.1
REDIS_BACKOFF_MAX_SECS = 5.0
# One user must not slow everyone: a user whose receivers are slow (or tarpits
# that accept and never answer) holds at most this many of this worker's
# consumers at once; more of their jobs wait (DEFER_SECS) without an attempt.
USER_JOBS_MAX = 2
# A job's devices are tried at once, up to this many (20 devices one after the
# other, each up to its timeouts, held a consumer for minutes).
DEVICES_AT_ONCE = 10
# Deliveries in flight to one host, over every user: a receiver host that stalls
# ties up at most this many; its other devices wait without an attempt. Above
# USER_JOBS_MAX x DEVICES_AT_ONCE, so it bites only when several users' devices
# share a host, and high enough for a shared relay (to APNs/FCM) to keep flowing.
HOST_DELIVERIES_MAX = 32
# How long a job or device at its cap waits (in the retry set) before another try.
DEFER_SECS = 1.0


def _redis_backoff() -> Backoff:
    return Backoff(REDIS_RETRY_FIRST_SECS, REDIS_BACKOFF_MAX_SECS)


class Pusher:
    """One push worker. `run()` serves until `stop()`; tests drive the steps
    (`start_up`, `promote`, `process_one`, `shut_down`) one at a time."""

    def __init__(
        self, rt: Runtime, *, worker_id: str | None = None, concurrency: int = 0
    ) -> None:
        self.rt = rt
        self.settings: Settings = rt.settings
        self.queue = PushQueue(rt.redis, self.settings.redis_url or "", worker_id)
        self.worker_id = self.queue.worker_id
        self.processing = self.queue.processing
        self.concurrency = concurrency or self.settings.push_concurrency
        self.providers = providers(self.settings)
        self._stopping = gevent.event.Event()
        # Jobs this worker's consumers are handling (see recover_strays).
        self._inflight: set[bytes] = set()
        # In flight now: jobs per user, deliveries per receiver host.
        self._user_jobs: Counter[int] = Counter()
        self._host_deliveries: Counter[str] = Counter()

    # ---- life ---------------------------------------------------------------------

    def start_up(self) -> int:
        """Announce this worker, requeue jobs of dead ones (left by a crash), and
        rebuild the device flags if Redis lost them. Returns jobs requeued."""
        requeued = self.queue.join()
        self.check_flags()
        return requeued

    def shut_down(self) -> int:
        """Put this worker's unfinished jobs back on the queue and leave."""
        return self.queue.leave()

    def heartbeat(self) -> None:
        self.queue.heartbeat()

    def recover_strays(self) -> int:
        """Requeue jobs of this worker's processing list that no consumer is
        handling (see PushQueue.recover_strays). Returns how many."""
        return self.queue.recover_strays(self._inflight)

    def check_flags(self) -> None:
        """Rebuild the users' device flags when Redis has lost them."""
        if self.queue.redis.exists(keys.PUSH_FLAGS_SYNCED):
            return
        users = devices.resync_flags()
        logger.info("push: device flags rebuilt for %d users", users)

    def queue_depth(self) -> int:
        depth = self.queue.depth()
        metrics.PUSH_QUEUE_DEPTH.set(depth)
        return depth

    # ---- jobs ---------------------------------------------------------------------

    def promote(self, now: float | None = None) -> int:
        """Turn due batches into jobs and put due retries back; returns how many."""
        return self.queue.promote(now)

    def process_one(
        self, timeout_secs: float = 0, client: redis.Redis | None = None
    ) -> bool:
        """Take one job (waiting up to timeout_secs) and deliver it.

        Returns False when no job came.
        """
        job = self.queue.take(timeout_secs, client)
        if job is None:
            return False
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
        if self._user_jobs[job.user_id] >= USER_JOBS_MAX:
            metrics.PUSH_DELIVERIES.labels(outcome="deferred").inc()
            self._finish(raw, retries=[(job.to_json(), time.time() + DEFER_SECS)])
            return
        self._user_jobs[job.user_id] += 1
        try:
            self._deliver_to_devices(raw, job)
        finally:
            self._user_jobs[job.user_id] -= 1
            if self._user_jobs[job.user_id] <= 0:
                del self._user_jobs[job.user_id]

    def _deliver_to_devices(self, raw: bytes, job: Job) -> None:
        try:
            wanted = push.recipient(
                job.user_id, job.conversation_id, job.messages, job.device_id
            )
        except Unavailable:
            # Not the device's fault: wait for the shard without spending an attempt.
            logger.warning(
                "push job %s: user %s's shard is down; retrying later",
                job.job_id,
                job.user_id,
            )
            self._finish(raw, retries=[(job.to_json(), time.time() + DB_RETRY_SECS)])
            return
        targets = wanted.devices
        if not targets:
            metrics.PUSH_DELIVERIES.labels(outcome="no_device").inc()
            self._finish(raw)
            return
        if not wanted.messages:
            # Muted now, or every sender in it blocked since (API.md).
            metrics.PUSH_DELIVERIES.labels(outcome="unwanted").inc()
            self._finish(raw)
            return
        body = push.build_push(job.user_id, job.conversation_id, wanted.messages)
        retries: list[tuple[str, float]] = []
        dead: list[str] = []
        pool = gevent.pool.Pool(DEVICES_AT_ONCE)
        results = pool.imap(lambda device: (device, self._send(device, body)), targets)
        for device, result in results:
            if result is None:  # its host is at its cap: wait, no attempt spent
                later = replace(job, device_id=device.device_id)
                retries.append((later.to_json(), time.time() + DEFER_SECS))
                outcome = "deferred"
            else:
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
            delay = retry_delay_secs(
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

    def _send(self, device: Device, body: dict[str, Any]) -> DeliveryResult | None:
        """Deliver to one device; None when its host is at HOST_DELIVERIES_MAX."""
        provider = self.providers.get(device.kind)
        if provider is None:
            return DeliveryResult("rejected", detail=f"no provider for {device.kind}")
        host = (urlsplit(device.url).hostname or device.url).lower()
        if self._host_deliveries[host] >= HOST_DELIVERIES_MAX:
            return None
        self._host_deliveries[host] += 1
        try:
            return provider.deliver(device, body)
        finally:
            self._host_deliveries[host] -= 1
            if self._host_deliveries[host] <= 0:
                del self._host_deliveries[host]

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
        """Take the job out of processing and file what is left (PushQueue.finish).

        While Redis is down this waits for it: the job stays in the processing
        list meanwhile, so a worker stopped now leaves it to be requeued.
        """
        retry = _redis_backoff()
        while True:
            try:
                self.queue.finish(raw, retries, dead)
                return
            except redis.RedisError as exc:
                metrics.REDIS_ERRORS.labels(op="push_finish").inc()
                if self._stopping.is_set():
                    raise
                logger.warning("push worker %s: %s; retrying", self.worker_id, exc)
                self._stopping.wait(retry.failed())

    # ---- serving ------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stop(): one maintenance loop and `concurrency` consumers."""
        retry = _redis_backoff()
        while not self._stopping.is_set():
            try:
                requeued = self.start_up()
                break
            except (redis.RedisError, Unavailable) as exc:
                metrics.REDIS_ERRORS.labels(op="push_start").inc()
                logger.warning("push worker: cannot start yet: %s", exc)
                self._stopping.wait(retry.failed())
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
        retry = _redis_backoff()
        while not self._stopping.is_set():
            try:
                now = time.monotonic()
                if now >= next_beat:
                    self.heartbeat()
                    next_beat = now + keys.PUSH_HEARTBEAT_SECS
                if now >= next_reap:
                    self.queue.reap()
                    self.recover_strays()
                    self.check_flags()
                    self.queue_depth()
                    next_reap = now + REAP_EVERY_SECS
                self.promote()
                retry.reset()
                wait = PROMOTE_EVERY_SECS
            except (redis.RedisError, Unavailable) as exc:
                metrics.REDIS_ERRORS.labels(op="push_maintain").inc()
                logger.warning("push worker %s: %s", self.worker_id, exc)
                wait = retry.failed()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failure
                logger.exception("push worker %s: maintenance failed", self.worker_id)
                wait = REDIS_BACKOFF_MAX_SECS
            self._stopping.wait(wait)

    def _consume(self) -> None:
        client = blocking_client(self.settings.redis_url or "", CONSUME_BLOCK_SECS)
        retry = _redis_backoff()
        try:
            while not self._stopping.is_set():
                try:
                    self.process_one(CONSUME_BLOCK_SECS, client)
                    retry.reset()
                except redis.RedisError as exc:
                    metrics.REDIS_ERRORS.labels(op="push_consume").inc()
                    logger.warning("push worker %s: %s", self.worker_id, exc)
                    self._stopping.wait(retry.failed())
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
