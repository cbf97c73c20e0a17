"""The bench's own HTTP client (messenger.bench.client.Connection) against
geventhttpclient, on loopback only, bounded in count and time (about a minute).

    .venv/bin/pip install geventhttpclient   # not a dependency: only this needs it
    .venv/bin/python -m messenger.bench.client_compare

The figures decide whether client.py is replaced (issue #12): see its docstring.

A tiny gevent HTTP server in a subprocess answers at once (so the figures are the
client's cost, not the messenger's):
  poll:  GET /v1/events?after=..&timeout=55 with a bearer token → 200, a ~450-byte
         JSON answer with one message event; the client parses it and polls again
         (a held poll answered and re-polled);
  send:  POST /v1/conversations/1/messages with a JSON body → 201, ~300 bytes.
  hold:  10,000 polls whose answer never comes (idle held polls), one socket and one
         greenlet each, each client in a fresh subprocess: client RSS per held poll.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import gevent
import psutil
from gevent import socket
from gevent.server import StreamServer

from messenger.bench.client import Connection, raise_open_file_limit

MODULE = "messenger.bench.client_compare"
HOST = "127.0.0.1"  # loopback only
TOKEN = "t" * 43
POLL_BODY = json.dumps(
    {
        "cursor": "c" * 40,
        "events": [
            {
                "type": "message",
                "seq": 17,
                "message": {
                    "id": 123456789,
                    "conversation_id": 42,
                    "seq": 17,
                    "sender_id": 7,
                    "client_msg_id": "wake-abc123-17",
                    "body": "The quick brown fox jumps over the lazy dog; " * 2,
                    "created_at": "2026-11-29T07:50:00.000000Z",
                },
            }
        ],
    }
).encode()
SEND_BODY = json.dumps(
    {
        "message": {
            "id": 123456789,
            "conversation_id": 42,
            "seq": 17,
            "sender_id": 7,
            "client_msg_id": "send-abc123-1-17",
            "body": "The quick brown fox jumps over the lazy dog; " * 2,
            "created_at": "2026-11-29T07:50:00.000000Z",
        }
    }
).encode()
CONCURRENCY = 50
REQUESTS = 10_000  # per run and operation
ROUNDS = 3
RUN_TIMEOUT_SECS = 60
IDLE_POLLS = 10_000
IDLE_OPEN_TIMEOUT_SECS = 60
IDLE_WINDOW_SECS = 5


# -- the server (a subprocess) -------------------------------------------------------


def reply(status: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


POLL_REPLY = reply("200 OK", POLL_BODY)
SEND_REPLY = reply("201 CREATED", SEND_BODY)


def handle(sock: socket.socket, address: object) -> None:
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            buf = buf[length:]
            if head.startswith(b"POST"):
                sock.sendall(SEND_REPLY)
            elif b"/hold" in head.split(b"\r\n", 1)[0]:
                while sock.recv(65536):  # never answered; ends when the client goes
                    pass
                return
            else:
                sock.sendall(POLL_REPLY)
    except OSError:
        return
    finally:
        sock.close()


def serve(port: int) -> None:
    raise_open_file_limit()
    server = StreamServer((HOST, port), handle, backlog=4096)
    server.serve_forever()


# -- clients -------------------------------------------------------------------------


class Ours:
    name = "bench client"

    def __init__(self, port: int) -> None:
        self.conn = Connection(port, timeout_secs=70)

    def poll(self, path: str) -> Any:
        response = self.conn.request("GET", path, token=TOKEN)
        assert response.status == 200
        return response.json()

    def send(self, path: str, payload: dict[str, str]) -> Any:
        response = self.conn.request("POST", path, token=TOKEN, body=payload)
        assert response.status == 201
        return response.json()

    def close(self) -> None:
        self.conn.close()


class Ghc:
    name = "geventhttpclient"

    def __init__(self, port: int) -> None:
        from geventhttpclient import HTTPClient

        self.client = HTTPClient(
            HOST, port, concurrency=1, connection_timeout=10, network_timeout=70
        )
        self.auth = {"Authorization": f"Bearer {TOKEN}"}
        self.post_headers = {**self.auth, "Content-Type": "application/json"}

    def poll(self, path: str) -> Any:
        response = self.client.get(path, headers=self.auth)
        body = response.read()
        assert response.status_code == 200
        return json.loads(body)

    def send(self, path: str, payload: dict[str, str]) -> Any:
        response = self.client.post(
            path, body=json.dumps(payload).encode(), headers=self.post_headers
        )
        body = response.read()
        assert response.status_code == 201
        return json.loads(body)

    def close(self) -> None:
        self.client.close()


CLIENTS: dict[str, type[Ours] | type[Ghc]] = {"ours": Ours, "ghc": Ghc}


def cpu_secs() -> float:
    t = os.times()
    return t.user + t.system


def run(kind: str, op: str, port: int) -> dict[str, float]:
    """CONCURRENCY connections, REQUESTS requests in all: client CPU and rate."""
    per_conn = REQUESTS // CONCURRENCY
    clients = [CLIENTS[kind](port) for _ in range(CONCURRENCY)]
    latencies: list[float] = []
    deadline = time.monotonic() + RUN_TIMEOUT_SECS

    def loop(i: int) -> None:
        client = clients[i]
        cursor = "c" * 40
        for k in range(per_conn):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            if op == "poll":
                answer = client.poll(f"/v1/events?after={cursor}&timeout=55")
                cursor = answer["cursor"]
            else:
                client.send(
                    "/v1/conversations/42/messages",
                    {"client_msg_id": f"send-{i}-{k}", "body": "hello " * 15},
                )
            latencies.append(time.perf_counter() - t0)

    # warm-up: connect every client once
    gevent.joinall([gevent.spawn(c.poll, "/v1/events?timeout=0") for c in clients])
    cpu0, wall0 = cpu_secs(), time.perf_counter()
    gevent.joinall([gevent.spawn(loop, i) for i in range(CONCURRENCY)], timeout=70)
    wall, cpu = time.perf_counter() - wall0, cpu_secs() - cpu0
    for c in clients:
        c.close()
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "per_sec": n / wall,
        "cpu_us_per_req": 1e6 * cpu / max(n, 1),
        "p50_ms": 1000 * latencies[n // 2],
        "p99_ms": 1000 * latencies[int(n * 0.99)],
    }


def rss_kb() -> int:
    return int(psutil.Process().memory_info().rss // 1024)


def idle(kind: str, port: int) -> dict[str, float]:
    """Hold IDLE_POLLS unanswered polls, one client (socket) and greenlet each."""
    raise_open_file_limit()
    held = [0]

    def hold(client: Ours | Ghc) -> None:
        held[0] += 1
        try:
            client.poll("/hold?after=x&timeout=55")
        except Exception:  # closed at the end: that is how every hold ends
            pass
        finally:
            held[0] -= 1

    # The client class, the greenlet machinery and one socket are warm before RSS0.
    warm = CLIENTS[kind](port)
    g = gevent.spawn(hold, warm)
    gevent.sleep(0.5)
    g.kill()
    warm.close()
    gc.collect()
    base = rss_kb()
    t0 = time.monotonic()
    clients, greenlets = [], []
    for i in range(IDLE_POLLS):
        c = CLIENTS[kind](port)
        clients.append(c)
        greenlets.append(gevent.spawn(hold, c))
        if i % 200 == 199:
            gevent.sleep(0.01)  # paced: the server's accept queue keeps up
        if time.monotonic() - t0 > IDLE_OPEN_TIMEOUT_SECS:
            break
    deadline = time.monotonic() + IDLE_OPEN_TIMEOUT_SECS
    while held[0] < len(clients) and time.monotonic() < deadline:
        gevent.sleep(0.1)
    gevent.sleep(1.0)
    open_secs = time.monotonic() - t0
    gc.collect()
    rss = rss_kb()
    cpu0, w0 = cpu_secs(), time.monotonic()
    gevent.sleep(IDLE_WINDOW_SECS)
    idle_cpu = 100 * (cpu_secs() - cpu0) / (time.monotonic() - w0)
    result = {
        "held": held[0],
        "open_secs": round(open_secs, 1),
        "rss_base_mb": round(base / 1024, 1),
        "rss_held_mb": round(rss / 1024, 1),
        "kb_per_held_poll": round((rss - base) / max(held[0], 1), 2),
        "idle_cpu_pct": round(idle_cpu, 2),
    }
    gevent.killall(greenlets, timeout=10)
    for c in clients:
        c.close()
    return result


def free_port() -> int:
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def child(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", MODULE, *args])


def main() -> None:
    port = free_port()
    server = child(["serve", str(port)])
    try:
        time.sleep(1.0)
        results: dict[str, dict[str, list[dict[str, float]]]] = {
            k: {"poll": [], "send": []} for k in CLIENTS
        }
        for r in range(ROUNDS):
            for op in ("poll", "send"):
                for kind in CLIENTS if r % 2 == 0 else reversed(list(CLIENTS)):
                    out = run(kind, op, port)
                    results[kind][op].append(out)
                    print(
                        f"round {r + 1} {op:4} {kind:5} "
                        + json.dumps({k: round(v, 1) for k, v in out.items()}),
                        flush=True,
                    )
        print(
            "\nmedian of",
            ROUNDS,
            "rounds,",
            CONCURRENCY,
            "connections,",
            REQUESTS,
            "requests a run:",
        )
        for op in ("poll", "send"):
            for kind, cls in CLIENTS.items():
                runs = results[kind][op]
                med = {
                    k: statistics.median(x[k] for x in runs)
                    for k in ("per_sec", "cpu_us_per_req", "p50_ms", "p99_ms")
                }
                print(
                    f"  {op:4} {cls.name:17} {med['per_sec']:8.0f} req/s  "
                    f"{med['cpu_us_per_req']:6.1f} µs client CPU/req  "
                    f"p50 {med['p50_ms']:.2f} ms  p99 {med['p99_ms']:.2f} ms"
                )
        print(f"\n{IDLE_POLLS:,} idle held polls, each client in a fresh process:")
        for kind, cls in CLIENTS.items():
            done = subprocess.run(
                [sys.executable, "-m", MODULE, "idle", kind, str(port)],
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            print(f"  {cls.name:17} {done.stdout.strip()} {done.stderr.strip()[-300:]}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]))
    elif sys.argv[1:2] == ["idle"]:
        print(json.dumps(idle(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
