"""The gunicorn worker class of the messenger: gevent's, draining on shutdown.

Stopping, gunicorn's gevent worker would let held long polls run until they time
out (up to 55 s, past graceful_timeout) and keep idle keep-alive connections open
until `keepalive`; on SIGINT or SIGQUIT it exits at once instead, dropping held
polls and printing a SystemExit traceback. This worker, on SIGTERM, SIGINT or
SIGQUIT alike (Ctrl-C in a terminal reaches the workers directly, and the master
forwards SIGQUIT on a quick stop), answers every held poll now with its cursor
unchanged, closes each connection after its current request, and shuts the idle
ones, so it exits within a second or two.

It overrides only these methods of gunicorn's workers, whose signatures and roles
are the same in every release from 23.0 to 27.0 (setup.cfg pins that range):
`handle_exit` (SIGTERM) and `handle_quit` (SIGINT, SIGQUIT), installed by
`Worker.init_signals`; `handle` (one connection) and `handle_request` (one request;
raising StopIteration ends the connection); and it clears `alive`, the flag the
run loop watches. Selected by `worker_class` in gunicorn.conf.py.
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


class OneSendAnswers:
    """The client's socket as one request's handler sees it, sending the answer's
    headers together with the first part of its body.

    gunicorn writes a response's headers and its body with two sendall calls: on
    loopback or a LAN each is a TCP segment and a wake-up of the reader, and in a
    fan-out profile the headers' send alone was a tenth of the worker's time. So
    the first write is held until the second (or the end of the request: flush),
    and an answer is one send. Any other use of the socket (fileno for sendfile,
    shutdown on an error) sends what is held first, so bytes keep their order.
    """

    __slots__ = ("_socket", "_held", "_has_written")

    def __init__(self, sock: Any) -> None:
        self._socket = sock
        self._held = b""
        self._has_written = False

    def sendall(self, data: bytes) -> None:
        if not self._has_written:
            self._has_written = True
            self._held = bytes(data)
            return
        if self._held:
            data, self._held = self._held + data, b""
        self._socket.sendall(data)

    def flush(self) -> None:
        """Send what is held (the headers of an answer without a body)."""
        if self._held:
            held, self._held = self._held, b""
            self._socket.sendall(held)

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self._socket, name)


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
        out = OneSendAnswers(sock)
        try:
            kept_alive = super().handle_request(listener_name, req, out, addr)
            out.flush()
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
