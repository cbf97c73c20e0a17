"""The gunicorn worker's socket for one request: an answer is one send."""

from __future__ import annotations

from typing import Any

from messenger.server_worker import OneSendAnswers


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
