"""The composition root: this process's runtime, its hooks and its background work.

The one place that wires the layers together; no module registers itself by being
imported.

- `build(settings)`: the runtime (runtime.py) with its hooks connected: every
  fan-out, wherever it runs (a request, the sweeper, `messenger sweep`), queues
  pushes for offline members. Starts nothing.
- `start(rt)`: this worker's background work: the wake-up dispatcher, the outbox
  sweeper (with its hourly removal of uploads never sent), the shard map
  follower (the directory's epoch), the presence tracker (whose notes the poll
  hooks feed) and the revocation listener (which keeps the token cache honest).
  Returns a Background that stops all of it.

gunicorn workers (wsgi.py) and the tests call both; `messenger sweep` and
`trim-events` only build.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import gevent

from messenger import runtime
from messenger.realtime.dispatcher import Dispatcher
from messenger.realtime.presence import PresenceBoard
from messenger.realtime.revocations import RevocationListener
from messenger.runtime import Runtime
from messenger.services import attachments, blocks, presence, push, sessions
from messenger.settings import Settings
from messenger.storage.follower import MapFollower
from messenger.workers.sweeper import Chore, SweepLoop

logger = logging.getLogger(__name__)

# How long stop() waits for each background greenlet to finish what it is doing.
STOP_TIMEOUT_SECS = 2.0
# Uploads never sent are removed after a day; looking hourly keeps them at most
# an hour past that.
COLLECT_ATTACHMENTS_EVERY_SECS = 3600.0


def build(settings: Settings) -> Runtime:
    """This process's runtime with its hooks connected, installed as runtime.get()."""
    rt = runtime.build(settings)
    rt.after_fanout.append(push.enqueue)
    runtime.install(rt)
    return rt


@dataclass
class Background:
    """The background work of one worker, as started by start()."""

    rt: Runtime
    dispatcher: Dispatcher
    sweeper: SweepLoop
    tracker: presence.Tracker
    revocations: RevocationListener
    follower: MapFollower
    greenlets: list[gevent.Greenlet] = field(default_factory=list)

    def stop(self) -> None:
        """Stop everything start() started and disconnect the poll hooks, once
        the fan-outs running behind answers have finished (bounded)."""
        fanouts = self.rt.background_fanouts
        fanouts.join(timeout=STOP_TIMEOUT_SECS)
        fanouts.kill(timeout=STOP_TIMEOUT_SECS)
        for hooks in (self.rt.hub.on_poll_start, self.rt.hub.on_poll_end):
            if self.tracker.note in hooks:
                hooks.remove(self.tracker.note)
        if presence.tracker() is self.tracker:
            presence.use_tracker(None)
        self.revocations.stop()
        sessions.token_cache.is_live = lambda: False
        sessions.token_cache.clear()
        blocks.blockers_cache.is_live = lambda: False
        blocks.blockers_cache.clear()
        self.sweeper.stop()
        self.follower.stop()
        self.tracker.stop()
        self.dispatcher.stop()
        gevent.joinall(self.greenlets, timeout=STOP_TIMEOUT_SECS)
        gevent.killall(self.greenlets, timeout=STOP_TIMEOUT_SECS)
        self.tracker.announcers.kill(timeout=STOP_TIMEOUT_SECS)


def start(rt: Runtime) -> Background:
    """Start this worker's dispatcher, sweeper, presence tracker and revocation
    listener; connect the poll hooks to the tracker and the token cache to the
    listener (the cache serves only while it listens). Once per runtime; stop()
    undoes it."""
    dispatcher = Dispatcher(
        rt.settings.redis_url or "", rt.worker_id, rt.hub, rt.registry
    )
    sweeper = SweepLoop(
        rt,
        [Chore("gc-attachments", COLLECT_ATTACHMENTS_EVERY_SECS, attachments.collect)],
    )
    follower = MapFollower(rt.router, rt.worker_id)
    tracker = presence.Tracker(rt, PresenceBoard(rt.redis))
    presence.use_tracker(tracker)
    rt.hub.on_poll_start.append(tracker.note)
    rt.hub.on_poll_end.append(tracker.note)
    cache = sessions.token_cache

    def forget_all() -> None:
        cache.clear()
        blocks.blockers_cache.clear()

    revocations = RevocationListener(
        rt.settings.redis_url or "",
        cache.drop,
        blocks.blockers_cache.drop,
        forget_all,
    )
    cache.is_live = lambda: revocations.listening
    blocks.blockers_cache.is_live = lambda: revocations.listening
    dispatcher.start()
    revocations.start()
    background = Background(
        rt,
        dispatcher,
        sweeper,
        tracker,
        revocations,
        follower,
        [
            gevent.spawn(sweeper.run),
            gevent.spawn(tracker.run),
            gevent.spawn(follower.run),
        ],
    )
    return background
