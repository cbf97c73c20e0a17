"""The load client: keep-alive HTTP/1.1 on gevent sockets, and the API calls it makes.

No monkey-patching: every blocking call here is a gevent socket call, so thousands of
held polls wait in one process for the price of a greenlet, a socket and a small
buffer each. (`python -m messenger.bench` imports the messenger package, and with it
Flask, before any of our code runs, so patching would come too late to be clean.)

Why not geventhttpclient (issue #12): measured against 2.6.1 on loopback with
`python -m messenger.bench.client_compare` (2026-11, 2 shared cores), this client
spent 18-28 µs of CPU per request where geventhttpclient spent 36-53 µs, on the
long poll answered and re-polled and on the send alike (lower in each of 18 paired
runs), and held 10,000 idle polls in 10.3-10.4 KB each against 15.1-16.7 KB. The
load client is one process, so its CPU per request is what bounds the bench: kept.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import resource
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import gevent
import gevent.pool
import gevent.queue
from gevent import socket

HOST = "127.0.0.1"  # the bench only ever talks to its own stack on this machine
RECV_BYTES = 65536
# A response head larger than this is a server bug, not something to buffer.
MAX_HEAD_BYTES = 64 * 1024
PASSWORD = "bench-password-1"


class TransportError(Exception):
    """The connection failed, closed early or timed out."""


class _StaleConnection(Exception):
    """A kept-alive socket was closed by the server before it read our request."""


class ApiFailure(Exception):
    """The server answered with a status the caller did not expect."""

    def __init__(
        self,
        method: str,
        path: str,
        status: int,
        body: bytes,
        retry_after_secs: float | None = None,
    ) -> None:
        super().__init__(
            f"{method} {path.split('?')[0]} answered {status}: "
            f"{body[:300].decode('utf-8', 'replace').strip()}"
        )
        self.status = status
        self.retry_after_secs = retry_after_secs


# Answers that say "not now": the request was not carried out, so it may be repeated.
RETRYABLE_STATUSES = (429, 503)
BACKOFF_FIRST_SECS = 0.25
BACKOFF_MAX_SECS = 8.0


def retry_after_secs(response: Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def backoff_secs(attempt: int, retry_after: float | None = None) -> float:
    """How long to wait before retry number attempt (0-based): exponential, jittered,
    never shorter than the server's Retry-After. Jitter keeps thousands of waiting
    polls from coming back in one wave."""
    base = min(BACKOFF_MAX_SECS, BACKOFF_FIRST_SECS * 2**attempt)
    return max(retry_after or 0.0, base * random.uniform(0.5, 1.5))


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def raise_open_file_limit() -> int:
    """Raise this process's soft open-file limit to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closed it."""

    def __init__(self, port: int, timeout_secs: float = 30.0) -> None:
        self.port = port
        self.timeout_secs = timeout_secs
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._buf = bytearray()

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        timeout_secs: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """Send one request and read its whole response (`headers`: more of them).

        A request on a kept-alive socket that the server had closed (gunicorn's
        keepalive timeout) is sent once more on a new socket: the server never read it.

        Raises:
            TransportError: connecting, sending or reading failed or timed out.
        """
        payload = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{self.port}"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        head.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        if body is not None:
            head.append("Content-Type: application/json")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(payload)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
        timeout = self.timeout_secs if timeout_secs is None else timeout_secs
        try:
            try:
                return self._exchange(data, timeout, is_reused=self._sock is not None)
            except _StaleConnection:
                self.close()
                return self._exchange(data, timeout, is_reused=False)
        except (OSError, TimeoutError, ValueError, _StaleConnection) as exc:
            self.close()
            raise TransportError(f"{method} {path.split('?')[0]}: {exc!r}") from exc

    def _exchange(self, data: bytes, timeout: float, *, is_reused: bool) -> Response:
        if self._sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(timeout)
            try:
                sock.connect((HOST, self.port))
            except BaseException:
                sock.close()
                raise
            self._sock = sock
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            if is_reused:
                raise _StaleConnection() from None
            raise
        return self._read_response(is_reused)

    def _recv(self) -> bytes:
        assert self._sock is not None
        return self._sock.recv(RECV_BYTES)

    def _read_response(self, is_reused: bool) -> Response:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_HEAD_BYTES:
                raise ValueError("response head too large")
            try:
                chunk = self._recv()
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if is_reused and not self._buf:
                    raise _StaleConnection()
                raise ConnectionError("connection closed before the response")
            self._buf += chunk
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = self._read_exact(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._read_chunked()
        elif status in (204, 304) or status < 200:
            body = b""
        else:
            body = self._read_to_eof()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, headers, body)

    def _read_exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            chunk = self._recv()
            if not chunk:
                raise ConnectionError("connection closed inside the body")
            self._buf += chunk
        body = bytes(self._buf[:size])
        del self._buf[:size]
        return body

    def _read_line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            chunk = self._recv()
            if not chunk:
                raise ConnectionError("connection closed inside a chunk")
            self._buf += chunk
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _read_chunked(self) -> bytes:
        parts = []
        while size := int(self._read_line().split(b";")[0], 16):
            parts.append(self._read_exact(size))
            self._read_line()
        while self._read_line():  # trailers end with an empty line
            pass
        return b"".join(parts)

    def _read_to_eof(self) -> bytes:
        while chunk := self._recv():
            self._buf += chunk
        body = bytes(self._buf)
        self._buf = bytearray()
        return body


class ConnectionPool:
    """A fixed set of keep-alive connections shared by many greenlets."""

    def __init__(self, port: int, size: int, timeout_secs: float = 30.0) -> None:
        self._idle: gevent.queue.LifoQueue[Connection] = gevent.queue.LifoQueue()
        self._all = [Connection(port, timeout_secs) for _ in range(size)]
        for conn in self._all:
            self._idle.put(conn)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        conn = self._idle.get()
        try:
            yield conn
        except BaseException:
            conn.close()  # its state is unknown: a half-read answer, a timeout
            raise
        finally:
            self._idle.put(conn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()


@dataclass(frozen=True)
class User:
    user_id: int
    handle: str
    token: str


class Api:
    """The API calls the scenarios make, over a shared pool or a given connection.

    Args:
        retries: how often a call answered 429 or 503 is repeated (after a backoff)
            unless the call says otherwise: setup traffic retries like a real
            client, while timed calls pass retries=0 so every failure is counted.
    """

    def __init__(self, port: int, pool_size: int = 64, retries: int = 0) -> None:
        self.port = port
        self.pool = ConnectionPool(port, pool_size)
        self.retries = retries

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        expect: Sequence[int] = (200,),
        conn: Connection | None = None,
        timeout_secs: float | None = None,
        retries: int | None = None,
    ) -> Any:
        """One request (repeated on 429/503 up to retries times); the JSON answer.

        Raises:
            ApiFailure: the status is not in expect.
            TransportError: the connection failed.
        """
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            if conn is None:
                with self.pool.connection() as pooled:
                    response = pooled.request(
                        method, path, token=token, body=body, timeout_secs=timeout_secs
                    )
            else:
                response = conn.request(
                    method, path, token=token, body=body, timeout_secs=timeout_secs
                )
            if response.status in expect:
                return response.json()
            if response.status not in RETRYABLE_STATUSES or attempt == retries:
                break
            gevent.sleep(backoff_secs(attempt, retry_after_secs(response)))
        raise ApiFailure(
            method, path, response.status, response.body, retry_after_secs(response)
        )

    def create_user(self, handle: str) -> User:
        """Register a user and log it in (two argon2 hashes on the server)."""
        self.call(
            "POST",
            "/v1/users",
            body={"handle": handle, "password": PASSWORD},
            expect=(201,),
        )
        answer = self.call(
            "POST",
            "/v1/sessions",
            body={"handle": handle, "password": PASSWORD},
            expect=(201,),
        )
        return User(answer["user"]["id"], handle, answer["token"])

    def direct(self, user: User, other: User) -> int:
        answer = self.call(
            "POST",
            "/v1/conversations",
            token=user.token,
            body={"kind": "direct", "user_id": other.user_id},
            expect=(200, 201),
        )
        return int(answer["conversation"]["id"])

    def group(self, owner: User, members: Sequence[User], title: str) -> int:
        answer = self.call(
            "POST",
            "/v1/conversations",
            token=owner.token,
            body={
                "kind": "group",
                "title": title,
                "member_ids": [m.user_id for m in members],
            },
            expect=(201,),
        )
        return int(answer["conversation"]["id"])

    def conversation(self, user: User, conversation_id: int) -> dict[str, Any]:
        answer = self.call(
            "GET", f"/v1/conversations/{conversation_id}", token=user.token
        )
        return dict(answer["conversation"])

    def send(
        self,
        user: User,
        conversation_id: int,
        client_msg_id: str,
        body: str,
        conn: Connection | None = None,
        retries: int | None = None,
    ) -> dict[str, Any]:
        answer = self.call(
            "POST",
            f"/v1/conversations/{conversation_id}/messages",
            token=user.token,
            body={"client_msg_id": client_msg_id, "body": body},
            expect=(201,),
            conn=conn,
            retries=retries,
        )
        return dict(answer["message"])

    def history(
        self,
        user: User,
        conversation_id: int,
        conn: Connection | None = None,
        retries: int | None = None,
        **params: int,
    ) -> dict[str, Any]:
        query = f"?{urlencode(params)}" if params else ""
        answer = self.call(
            "GET",
            f"/v1/conversations/{conversation_id}/messages{query}",
            token=user.token,
            conn=conn,
            retries=retries,
        )
        return dict(answer)

    def head_cursor(self, user: User) -> str:
        """The cursor to start polling from (GET /v1/events without after)."""
        return str(self.call("GET", "/v1/events", token=user.token)["cursor"])

    def close(self) -> None:
        self.pool.close()


def events_path(cursor: str, timeout_secs: int, limit: int | None = None) -> str:
    params: dict[str, str | int] = {"after": cursor, "timeout": timeout_secs}
    if limit is not None:
        params["limit"] = limit
    return f"/v1/events?{urlencode(params)}"


def run_bounded(jobs: Sequence[Any], worker: Any, concurrency: int) -> list[Any]:
    """Run worker(job) for every job, at most concurrency at once; results in order.

    The first exception is raised after the others finished.
    """
    pool = gevent.pool.Pool(concurrency)
    greenlets = [pool.spawn(worker, job) for job in jobs]
    gevent.joinall(greenlets)
    for g in greenlets:
        if g.exception is not None:
            raise g.exception
    return [g.value for g in greenlets]


_counter = itertools.count()


def unique_suffix() -> str:
    """A short id unique within this process (for client_msg_ids)."""
    return format(next(_counter), "x")
