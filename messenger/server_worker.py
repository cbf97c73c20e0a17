"""The gunicorn worker class of the messenger: gevent's, draining on shutdown.

Stopping, gunicorn's gevent worker would let held long polls run until they time
out (up to 55 s, past graceful_timeout) and keep idle keep-alive connections open
until `keepalive`; on SIGINT or SIGQUIT it exits at once instead, dropping held
polls and printing a SystemExit traceback. This worker, on SIGTERM, SIGINT or
SIGQUIT alike (Ctrl-C in a terminal reaches the workers directly, and the master
forwards SIGQUIT on a quick stop), answers every held poll now with its cursor
unchanged, closes each connection after its current request, and shuts the idle
ones, so it exits within a second or two. Fan-outs still running behind the
answers they followed (their parts on other databases) get a few seconds to end
before the process does.

It overrides only these methods of gunicorn's workers, whose signatures and roles
are the same in every release from 23.0 to 27.0 (setup.cfg pins that range):
`handle_exit` (SIGTERM) and `handle_quit` (SIGINT, SIGQUIT), installed by
`Worker.init_signals`; `handle` (one connection) and `handle_request` (one request;
raising StopIteration ends the connection); `run` (serves until `alive` is
cleared and the requests under way are done; the process exits when it
returns); and it clears `alive`, the flag the run loop watches. Selected by
`worker_class` in gunicorn.conf.py.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from types import FrameType
from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventWorker

logger = logging.getLogger(__name__)

# Idle keep-alive connections are shut this long after the signal: a request
# whose bytes are already on their way still reaches its handler (and is then
# answered and closed) rather than being cut off.
IDLE_CLOSE_DELAY_SECS = 0.2
# A fan-out's part on another database gives up after the fan-out's remote
# timeout (5 s, services/fanout.py); a little longer lets every part end on its
# own. The bound stays far below graceful_timeout (20 s), after which the
# master kills the worker. A part cut off anyway is safe: it is one transaction,
# rolled back with its connection, and the sweeper replays it, writing nothing
# twice.
BACKGROUND_FANOUTS_FINISH_SECS = 6.0


def drain_held_polls() -> None:
    """Answer every poll this process holds, now (nothing held: nothing to do),
    take this worker out of Redis so senders stop waking it, and out of the
    shard map's followers so a shard move does not wait for it."""
    from messenger import runtime
    from messenger.realtime.dispatcher import deregister
    from messenger.storage.follower import forget

    with contextlib.suppress(RuntimeError):  # no runtime: nothing is held
        rt = runtime.get()
        rt.hub.drain()
        deregister(rt.registry)
        forget(rt.router, rt.worker_id)


def finish_background_fanouts() -> None:
    """Wait (bounded) for the fan-outs this process runs behind answers."""
    from messenger import runtime

    with contextlib.suppress(RuntimeError):  # no runtime: nothing runs
        fanouts = runtime.get().background_fanouts
        if len(fanouts) and not fanouts.join(timeout=BACKGROUND_FANOUTS_FINISH_SECS):
            logger.warning(
                "stopping with %d fan-outs unfinished; the sweeper finishes them",
                len(fanouts),
            )


class DrainingGeventWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker, answering held polls when told to stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Each connection's greenlet → its client socket, and the greenlets that
        # are inside a request (the others wait idle for the next one).
        self._connections: dict[gevent.Greenlet, socket.socket] = {}
        self._busy: set[gevent.Greenlet] = set()
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: a graceful stop."""
        self.drain()

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGINT and SIGQUIT: stop as gracefully as SIGTERM, and run the
        worker_int hook as gunicorn's own quick exit would."""
        gevent.spawn(self.cfg.worker_int, self)
        self.drain()

    def drain(self) -> None:
        """Stop accepting, answer held polls, close idle connections (runs in the
        signal handler: only spawns)."""
        self.alive = False
        if self._draining:
            return
        self._draining = True
        gevent.spawn(drain_held_polls)
        gevent.spawn_later(IDLE_CLOSE_DELAY_SECS, self._close_idle)

    def run(self) -> None:
        """Serve until stopped, then let background fan-outs finish (bounded):
        the requests that started them are all answered by now."""
        super().run()
        finish_background_fanouts()

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        current = gevent.getcurrent()
        self._connections[current] = client
        try:
            super().handle(listener, client, addr)
        finally:
            self._connections.pop(current, None)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        current = gevent.getcurrent()
        self._busy.add(current)
        try:
            kept_alive = super().handle_request(listener_name, req, sock, addr)
        finally:
            self._busy.discard(current)
        # gunicorn decides keep-alive when a request starts, and a poll the drain
        # answered started while the worker was alive: end its connection here.
        if not self.alive:
            raise StopIteration
        return kept_alive

    def _close_idle(self) -> None:
        # Shutting an idle connection's socket down ends it as a client hang-up
        # would; left open it would hold the worker until graceful_timeout. The
        # shutdown goes through a duplicate of the descriptor: gevent's own
        # shutdown() of the socket would fail its greenlet's pending read with
        # EBADF, which gunicorn logs as an error with a traceback.
        for greenlet, client in list(self._connections.items()):
            if greenlet not in self._busy:
                with contextlib.suppress(OSError):
                    duplicate = socket.fromfd(
                        client.fileno(), client.family, client.type
                    )
                    with duplicate:
                        duplicate.shutdown(socket.SHUT_RDWR)
