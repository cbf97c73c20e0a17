"""The composition root: what it connects, and that it stops what it starts."""

from typing import Any

import gevent

from messenger import bootstrap, runtime
from messenger.services import attachments, presence, push
from messenger.settings import Settings


def test_the_built_runtime_pushes_after_every_fan_out(app: Any) -> None:
    assert runtime.get().after_fanout == [push.enqueue]


def test_background_stops_everything_it_started(settings: Settings) -> None:
    session_tracker = presence.tracker()
    rt = runtime.build(settings)  # beside the app's runtime, not installed
    try:
        background = bootstrap.start(rt)
        assert presence.tracker() is background.tracker
        assert rt.hub.on_poll_start == [background.tracker.note]
        assert rt.hub.on_poll_end == [background.tracker.note]
        workers = background.greenlets + background.dispatcher._greenlets
        gevent.sleep(0.05)
        assert not any(g.dead for g in workers)

        background.stop()
        assert all(g.dead for g in workers)
        # The sweep loop, the tracker and the map follower ended on their own,
        # not by a kill.
        assert [g.value for g in background.greenlets] == [None, None, None]
        assert rt.hub.on_poll_start == [] and rt.hub.on_poll_end == []
        assert presence.tracker() is None
    finally:
        presence.use_tracker(session_tracker)
        rt.close()


def test_the_sweeper_collects_unsent_uploads_hourly(settings: Settings) -> None:
    session_tracker = presence.tracker()
    rt = runtime.build(settings)
    try:
        background = bootstrap.start(rt)
        try:
            [chore] = background.sweeper.chores
            assert chore.name == "gc-attachments"
            assert chore.run is attachments.collect
            assert chore.every_secs == bootstrap.COLLECT_ATTACHMENTS_EVERY_SECS == 3600
        finally:
            background.stop()
    finally:
        presence.use_tracker(session_tracker)
        rt.close()


def test_a_chore_runs_when_due_and_a_failing_one_does_not_stop_the_loop(
    settings: Settings, override_settings: Any
) -> None:
    from messenger.workers.sweeper import Chore, SweepLoop

    override_settings(sweeper_interval_secs=0.05)
    ran: list[str] = []

    def failing(rt: Any) -> None:
        ran.append("failing")
        raise RuntimeError("boom")

    loop = SweepLoop(
        runtime.get(),
        [Chore("failing", 0.05, failing), Chore("counting", 0.05, ran.append)],
    )
    worker = gevent.spawn(loop.run)
    try:
        deadline = 100
        while ran.count("failing") < 2 and deadline:
            gevent.sleep(0.05)
            deadline -= 1
        assert ran.count("failing") >= 2
        assert len(ran) - ran.count("failing") >= 2  # the other chore kept running
    finally:
        loop.stop()
        worker.join(timeout=5)
    assert worker.dead
