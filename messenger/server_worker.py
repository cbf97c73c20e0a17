"""The gunicorn worker classes of the messenger: gevent, draining on shutdown.

Stopping, gunicorn's gevent worker would let held long polls run until they time
out (up to 55 s, past graceful_timeout) and keep idle keep-alive connections open
until `keepalive`; on SIGINT or SIGQUIT it exits at once instead, dropping held
polls and printing a SystemExit traceback. These workers, on SIGTERM, SIGINT or
SIGQUIT alike (Ctrl-C in a terminal reaches the workers directly, and the master
forwards SIGQUIT on a quick stop), answer every held poll now with its cursor
unchanged, close each connection after its current request, and shut the idle
ones, so they exit within a second or two. Fan-outs still running behind the
answers they followed (their parts on other databases) get a few seconds to end
before the process does.

DrainingPyWSGIWorker (the one gunicorn.conf.py selects) serves HTTP with
gevent.pywsgi inside gunicorn's gevent worker: per answered poll it cost a
quarter less worker CPU than gunicorn's own HTTP code (issue 13: fan-out to 500
members, 279 → 227 µs per delivery), since it parses, builds the environ and
writes the answer (headers and body in one send) with less work. It keeps
gunicorn's request limits (limit_request_line, limit_request_fields,
limit_request_field_size: answered 400) and bounds the reading of each request
by `keepalive` seconds, as gunicorn bounds a keep-alive connection's wait.
DrainingGeventWorker keeps gunicorn's HTTP code (a fallback: set worker_class).

They override only these methods of gunicorn's workers, whose signatures and
roles are the same in every release from 23.0 to 27.0 (setup.cfg pins that
range): `handle_exit` (SIGTERM) and `handle_quit` (SIGINT, SIGQUIT), installed by
`Worker.init_signals`; `run` (serves until `alive` is cleared and the requests
under way are done; the process exits when it returns); DrainingGeventWorker's
`handle` (one connection) and `handle_request` (one request; raising
StopIteration ends the connection); and they clear `alive`, the flag the run
loop watches. DrainingPyWSGIWorker sets gunicorn's `server_class` and
`wsgi_handler` hooks, and its handler overrides gevent.pywsgi.WSGIHandler's
documented steps (handle, read_requestline, read_request,
get_environ, start_response, handle_one_response, log_request).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from types import FrameType
from typing import Any

import gevent
from gevent.pywsgi import LoggingLogAdapter
from gunicorn.workers.ggevent import GeventWorker, PyWSGIHandler, PyWSGIServer

logger = logging.getLogger(__name__)
_http_logger = logging.getLogger("messenger.http")

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


class _DrainingWorker(GeventWorker):  # type: ignore[misc]
    """What both workers do when told to stop: stop accepting, answer held
    polls, close idle connections, then let background fan-outs finish.

    Each subclass keeps `connections` (a connection's key, its greenlet or its
    handler → its client socket) and `busy` (the keys inside a request; the
    others wait idle for the next one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: dict[Any, socket.socket] = {}
        self.busy: set[Any] = set()
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

    def _close_idle(self) -> None:
        for key, client in list(self.connections.items()):
            if key not in self.busy:
                shut_down(client)


class DrainingGeventWorker(_DrainingWorker):
    """gunicorn's gevent worker, answering held polls when told to stop."""

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        current = gevent.getcurrent()
        self.connections[current] = client
        try:
            super().handle(listener, client, addr)
        finally:
            self.connections.pop(current, None)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        current = gevent.getcurrent()
        self.busy.add(current)
        out = OneSendAnswers(sock)
        try:
            kept_alive = super().handle_request(listener_name, req, out, addr)
            out.flush()
        finally:
            self.busy.discard(current)
        # gunicorn decides keep-alive when a request starts, and a poll the drain
        # answered started while the worker was alive: end its connection here.
        if not self.alive:
            raise StopIteration
        return kept_alive


def shut_down(client: socket.socket) -> None:
    """End an idle connection as a client hang-up would; left open it would hold
    the worker until graceful_timeout. The shutdown goes through a duplicate of
    the descriptor: gevent's own shutdown() of the socket would fail its
    greenlet's pending read with EBADF, which is logged as an error with a
    traceback."""
    with contextlib.suppress(OSError):
        duplicate = socket.fromfd(client.fileno(), client.family, client.type)
        with duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)


# -- gevent.pywsgi inside gunicorn's gevent worker ------------------------------------


class _LimitExceeded(ValueError):
    """A request beyond gunicorn's limits: pywsgi answers 400 and closes."""


class _Handler(PyWSGIHandler):  # type: ignore[misc]
    """gevent.pywsgi's handler (as gunicorn subclasses it) with gunicorn's
    request limits, a bound on reading each request, the client's socket in the
    environ where gunicorn puts it, and the drain of DrainingPyWSGIWorker."""

    server: _Server

    def handle(self) -> None:
        """One connection, its requests one after another."""
        worker = self.server.worker
        worker.connections[self] = self.socket
        try:
            super().handle()
        finally:
            worker.connections.pop(self, None)
            worker.busy.discard(self)

    def read_requestline(self) -> str:
        # An idle keep-alive connection, or a client that never finishes its
        # request line, is closed after `keepalive` seconds (a socket error
        # ends the connection quietly).
        cfg = self.server.worker.cfg
        with gevent.Timeout(cfg.keepalive, TimeoutError("no request")):
            line = self.rfile.readline(cfg.limit_request_line + 3)
        return line.decode("latin-1")  # type: ignore[no-any-return]

    def read_request(self, raw_requestline: str) -> bool:
        cfg = self.server.worker.cfg
        if len(raw_requestline.rstrip("\r\n")) > cfg.limit_request_line:
            raise _LimitExceeded("The request line is too long.")
        with gevent.Timeout(cfg.keepalive, _LimitExceeded("Headers too slow.")):
            is_read = super().read_request(raw_requestline)
        if len(self.headers) > cfg.limit_request_fields:
            raise _LimitExceeded("Too many header fields.")
        for name, value in self.headers.items():
            if len(name) + len(value) + 2 > cfg.limit_request_field_size:
                raise _LimitExceeded("A header field is too large.")
        self.server.worker.busy.add(self)
        return is_read  # type: ignore[no-any-return]

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        # Where gunicorn's own worker puts it: the app bounds its sends with it
        # and a held poll watches it for the client hanging up.
        environ["gunicorn.socket"] = self.socket
        return environ

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        # An answer written after the drain began (a held poll's) is the last
        # on its connection, and says so.
        if not self.server.worker.alive:
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def handle_one_response(self) -> None:
        try:
            super().handle_one_response()
        finally:
            self.server.worker.busy.discard(self)

    def log_request(self) -> None:
        # The app writes the access log (messenger.access); gunicorn's is off
        # unless configured.
        if self.server.worker.cfg.accesslog:
            super().log_request()


class _Server(PyWSGIServer):  # type: ignore[misc]
    # The worker of this process (one per process), for its handlers.
    worker: DrainingPyWSGIWorker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A client's malformed request is no server error: a debug line of the
        # log (JSON, with the others), as gunicorn's own code logs it.
        self.error_log = LoggingLogAdapter(_http_logger, logging.DEBUG)
        if self.worker.cfg.workers > 1:
            # As gunicorn's own gevent server: one accept per wake-up, so
            # connections spread over the workers instead of bunching on one.
            self.max_accept = 1


class DrainingPyWSGIWorker(_DrainingWorker):
    """gunicorn's gevent worker serving HTTP with gevent.pywsgi, answering held
    polls when told to stop."""

    server_class = _Server
    wsgi_handler = _Handler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Server.worker = self
