"""The composition root: what it connects, and that it stops what it starts."""

from typing import Any

import gevent

from messenger import bootstrap, runtime
from messenger.services import presence, push
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
