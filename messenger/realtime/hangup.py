"""Notice a long-poll client hanging up while its request waits.

A WSGI app only learns of a closed connection when it writes. A held poll would
otherwise keep its hub entry until its deadline; instead an I/O watcher on the
client socket (no greenlet, no timer) releases the waiter as soon as the peer
closes.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

import gevent

from messenger.realtime.hub import CLIENT_GONE, Waiter

logger = logging.getLogger(__name__)

_READ = 1


def watch_hangup(sock: socket.socket, waiter: Waiter) -> Callable[[], None]:
    """Release `waiter` when the client closes `sock`; returns a stop function."""
    try:
        fileno = sock.fileno()
    except OSError:
        return lambda: None
    if fileno < 0:
        return lambda: None
    # The C-level socket under gevent's wrapper: its recv never yields, which a
    # callback running in the event loop must not do.
    raw = getattr(sock, "_sock", sock)
    watcher = gevent.get_hub().loop.io(fileno, _READ)

    def readable() -> None:
        try:
            data = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return
            data = b""
        watcher.stop()
        if data == b"":
            waiter.released = CLIENT_GONE
            waiter.event.set()
        # Otherwise the client pipelined its next request: leave it for the server.

    watcher.start(readable)
    return watcher.stop
