"""The gunicorn workers' pieces: one send per answer; pywsgi with gunicorn's limits."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from messenger.server_worker import OneSendAnswers, _Handler, _Server


class RecordingSocket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.calls: list[str] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))

    def fileno(self) -> int:
        self.calls.append("fileno")
        return 7


def test_headers_and_body_go_in_one_send() -> None:
    sock = RecordingSocket()
    out = OneSendAnswers(sock)
    out.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    out.sendall(b"{}")
    out.sendall(b"more")
    out.flush()
    assert sock.sends == [b"HTTP/1.1 200 OK\r\n\r\n{}", b"more"]


def test_an_answer_without_body_is_sent_at_flush() -> None:
    sock = RecordingSocket()
    out = OneSendAnswers(sock)
    out.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert sock.sends == []
    out.flush()
    out.flush()
    assert sock.sends == [b"HTTP/1.1 204 No Content\r\n\r\n"]


def test_other_uses_of_the_socket_send_what_is_held_first() -> None:
    # sendfile writes the body through the descriptor: the headers go first.
    sock = RecordingSocket()
    out: Any = OneSendAnswers(sock)
    out.sendall(b"headers")
    assert out.fileno() == 7
    assert sock.sends == [b"headers"] and sock.calls == ["fileno"]
    out.sendall(b"body")
    assert sock.sends == [b"headers", b"body"]


# ---- the gevent.pywsgi worker's handler ---------------------------------------------


class FakeConfig:
    keepalive = 0.5
    limit_request_line = 100
    limit_request_fields = 5
    limit_request_field_size = 50
    accesslog = None
    workers = 1


class FakeWorker:
    def __init__(self) -> None:
        self.cfg = FakeConfig()
        self.alive = True
        self.connections: dict[Any, Any] = {}
        self.busy: set[Any] = set()


@pytest.fixture
def served() -> Iterator[tuple[FakeWorker, int, list[dict[str, Any]]]]:
    """A pywsgi server with the worker's handler, on a free loopback port."""
    worker = FakeWorker()
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    previous = getattr(_Server, "worker", None)
    _Server.worker = worker  # type: ignore[assignment]
    server = _Server(("127.0.0.1", 0), application=app, handler_class=_Handler)
    server.start()
    try:
        yield worker, server.server_port, seen
    finally:
        server.stop(timeout=1)
        if previous is not None:
            _Server.worker = previous


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
        return answer


def test_requests_beyond_the_limits_are_400(served: Any) -> None:
    _worker, port, seen = served
    ok = _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")
    for request in (
        b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(6))
        + b"\r\n",
        b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 60 + b"\r\n\r\n",
    ):
        assert _exchange(port, request).startswith(b"HTTP/1.1 400 ")
    assert len(seen) == 1
    assert "gunicorn.socket" in seen[0]


def test_an_idle_or_slow_connection_is_closed_after_keepalive(served: Any) -> None:
    _worker, port, _seen = served
    started = time.monotonic()
    assert _exchange(port, b"") == b""
    assert _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n").startswith(
        b"HTTP/1.1 400 "
    )
    assert time.monotonic() - started < 5 * FakeConfig.keepalive


def test_answers_after_the_drain_began_close_their_connection(served: Any) -> None:
    worker, port, _seen = served
    worker.alive = False
    answer = _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nConnection: close\r\n" in answer
    assert not worker.connections and not worker.busy
