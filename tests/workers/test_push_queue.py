"""workers/push_queue.py on a real Redis: jobs move atomically between the
queue, a worker's processing list, the retry set and the dead letters, and the
jobs of dead workers come back."""

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
import redis as redis_lib

from messenger.realtime import keys
from messenger.workers.push_queue import Job, PushQueue
from tests.conftest import Services

MakeQueue = Callable[..., PushQueue]


@pytest.fixture
def make_queue(services: Services, redis: redis_lib.Redis) -> Iterator[MakeQueue]:
    """PushQueues on an empty queue (`redis` is flushed); each leaves at the end
    of the test."""
    made: list[PushQueue] = []

    def make(worker_id: str | None = None) -> PushQueue:
        queue = PushQueue(redis, services.redis.url, worker_id)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.leave()


def _job(job_id: int, **changes: Any) -> bytes:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "user_id": 12,
        "conversation_id": 9,
        "attempt": 0,
        "device_id": None,
        "messages": [{"seq": job_id}],
    }
    fields.update(changes)
    return Job(**fields).to_json().encode()


def _batch(redis: redis_lib.Redis, user_id: int, due: float, *bodies: str) -> None:
    items = [json.dumps({"body": body}) for body in bodies]
    redis.rpush(keys.push_pending(user_id, 9), *items)
    redis.zadd(keys.PUSH_DUE, {f"{user_id}:9": due})


def _exited_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_promote_makes_one_job_of_a_batch_once_it_is_due(
    make_queue: MakeQueue, redis: redis_lib.Redis
) -> None:
    queue = make_queue()
    now = time.time()
    _batch(redis, 12, now + 30, "one", "two")
    assert queue.promote(now) == 0
    assert queue.promote(now + 31) == 1
    job = Job.parse(queue.take() or b"")
    assert (job.user_id, job.conversation_id, job.attempt, job.device_id) == (
        12,
        9,
        0,
        None,
    )
    assert job.messages == [{"body": "one"}, {"body": "two"}]
    assert not redis.exists(keys.push_pending(12, 9))
    assert queue.promote(now + 3600) == 0


def test_promote_returns_retries_to_the_queue_when_their_time_comes(
    make_queue: MakeQueue, redis: redis_lib.Redis
) -> None:
    queue = make_queue()
    now = time.time()
    redis.zadd(keys.PUSH_RETRY, {_job(1): now + 10})
    assert queue.promote(now) == 0
    assert queue.take() is None
    assert queue.promote(now + 11) == 1
    assert queue.take() == _job(1)


def test_a_taken_job_stays_in_the_processing_list_until_finished(
    make_queue: MakeQueue, redis: redis_lib.Redis
) -> None:
    queue = make_queue()
    redis.lpush(keys.PUSH_QUEUE, _job(1))
    raw = queue.take()
    assert raw == _job(1)
    assert redis.lrange(queue.processing, 0, -1) == [raw]
    later = _job(1, attempt=1, device_id=5)
    dead = _job(1, attempt=1, device_id=6)
    queue.finish(raw, retries=[(later.decode(), 1234.0)], dead=[dead.decode()])
    assert redis.llen(queue.processing) == 0
    assert redis.zrange(keys.PUSH_RETRY, 0, -1, withscores=True) == [(later, 1234.0)]
    assert redis.lrange(keys.PUSH_DEAD, 0, -1) == [dead]


def test_dead_letters_keep_the_newest(
    make_queue: MakeQueue, redis: redis_lib.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keys, "PUSH_DEAD_MAX", 2)
    queue = make_queue()
    for job_id in range(1, 4):
        redis.lpush(keys.PUSH_QUEUE, _job(job_id))
        raw = queue.take()
        assert raw is not None
        queue.finish(raw, dead=[raw.decode()])
    assert redis.lrange(keys.PUSH_DEAD, 0, -1) == [_job(3), _job(2)]


def test_take_waits_for_a_job_on_a_blocking_connection(
    make_queue: MakeQueue, redis: redis_lib.Redis
) -> None:
    queue = make_queue()
    started = time.monotonic()
    assert queue.take(timeout_secs=0.2) is None
    assert time.monotonic() - started >= 0.15
    waiting = gevent.spawn(queue.take, 5)
    gevent.sleep(0.1)
    redis.lpush(keys.PUSH_QUEUE, _job(1))
    assert waiting.get(timeout=5) == _job(1)
    assert redis.lrange(queue.processing, 0, -1) == [_job(1)]


def test_leaving_puts_unfinished_jobs_back_and_forgets_the_worker(
    make_queue: MakeQueue, redis: redis_lib.Redis
) -> None:
    queue = make_queue()
    queue.join()
    assert redis.sismember(keys.PUSH_WORKERS, queue.worker_id)
    redis.lpush(keys.PUSH_QUEUE, _job(1))
    assert queue.take() is not None
    assert queue.leave() == 1
    assert redis.lrange(keys.PUSH_QUEUE, 0, -1) == [_job(1)]
    assert not redis.sismember(keys.PUSH_WORKERS, queue.worker_id)
    assert not redis.exists(keys.push_alive(queue.worker_id))


def test_a_dead_workers_jobs_are_taken_next(
    make_queue: MakeQueue, redis: redis_lib.Redis
) -> None:
    """A requeued job was taken before anything still queued: it goes first."""
    dead = make_queue("elsewhere:4242:abcdef")
    dead.heartbeat()
    redis.lpush(keys.PUSH_QUEUE, _job(1))
    assert dead.take() == _job(1)
    redis.lpush(keys.PUSH_QUEUE, _job(2))
    live = make_queue()
    assert live.join() == 0  # another host's fresh heartbeat: alive
    redis.delete(keys.push_alive(dead.worker_id))
    assert live.reap() == 1
    assert not redis.sismember(keys.PUSH_WORKERS, dead.worker_id)
    assert live.take() == _job(1)
    assert live.take() == _job(2)


def test_a_crashed_worker_on_this_host_is_reaped_before_its_heartbeat_lapses(
    make_queue: MakeQueue, redis: redis_lib.Redis
) -> None:
    crashed = make_queue(f"{socket.gethostname()}:{_exited_pid()}:abcdef")
    crashed.heartbeat()
    redis.lpush(keys.PUSH_QUEUE, _job(1))
    assert crashed.take() == _job(1)
    assert make_queue().join() == 1
    assert redis.lrange(keys.PUSH_QUEUE, 0, -1) == [_job(1)]


def test_strays_are_requeued_at_the_second_look_unless_in_flight(
    make_queue: MakeQueue, redis: redis_lib.Redis
) -> None:
    queue = make_queue()
    redis.lpush(queue.processing, _job(1), _job(2))
    in_flight = {_job(2)}
    assert queue.recover_strays(in_flight) == 0
    assert queue.recover_strays(in_flight) == 1
    assert redis.lrange(keys.PUSH_QUEUE, 0, -1) == [_job(1)]
    assert redis.lrange(queue.processing, 0, -1) == [_job(2)]


def test_depth_counts_ready_retrying_and_due_work(
    make_queue: MakeQueue, redis: redis_lib.Redis
) -> None:
    queue = make_queue()
    redis.lpush(keys.PUSH_QUEUE, _job(1), _job(2))
    redis.zadd(keys.PUSH_RETRY, {_job(3): time.time() + 60})
    _batch(redis, 12, time.time() + 60, "later")
    assert queue.depth() == 4


def test_push_dlq_lists_and_replays_dead_letters(
    services: Services, redis: redis_lib.Redis, capsys: Any, monkeypatch: Any
) -> None:
    from messenger import cli

    for name, value in services.env().items():
        monkeypatch.setenv(name, value)
    dead = [
        _job(1, attempt=8, error="HTTP 500"),
        _job(2, attempt=8, device_id=44, error="timed out"),
    ]
    redis.lpush(keys.PUSH_DEAD, *dead)
    redis.lpush(keys.PUSH_DEAD, b"not a job")
    assert cli.main(["push-dlq", "list"]) == 0
    out = capsys.readouterr().out
    assert "3 dead-lettered jobs" in out
    assert "job 2: user 12, conversation 9, 1 messages, device 44" in out
    assert "HTTP 500" in out and "(not a job)" in out

    assert cli.main(["push-dlq", "replay", "--limit", "10"]) == 0
    out = capsys.readouterr().out
    assert "2 jobs queued again" in out and "push-dlq replay [" in out
    queued = [Job.parse(raw) for raw in redis.lrange(keys.PUSH_QUEUE, 0, -1)]
    assert sorted((j.job_id, j.attempt, j.device_id) for j in queued) == [
        (1, 0, None),
        (2, 0, 44),
    ]
    assert all(j.error is None for j in queued)
    assert redis.lrange(keys.PUSH_DEAD, 0, -1) == [b"not a job"]
