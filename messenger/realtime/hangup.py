"""Notice a long-poll client hanging up while its request waits.

A WSGI app only learns of a closed connection when it writes. A held poll would
otherwise keep its hub entry until its deadline; instead an I/O watcher on the
client socket (no greenlet, no timer) calls back as soon as the peer closes.
Hub.listen uses it; nothing else needs to.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

import gevent

logger = logging.getLogger(__name__)

_READ = 1


def watch_hangup(
    sock: socket.socket, on_hangup: Callable[[], None]
) -> Callable[[], None]:
    """Call `on_hangup` (in the event loop: it must not block) when the client
    closes `sock`; returns a function that stops watching."""
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
            on_hangup()
        # Otherwise the client pipelined its next request: leave it for the server.

    watcher.start(readable)
    return watcher.stop
