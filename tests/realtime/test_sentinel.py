"""A `redis+sentinel://` URL: the clients find the primary through a real Sentinel."""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as redis_lib

from messenger.embedded import EmbeddedRedis, find_redis_server, free_port
from messenger.realtime.connections import blocking_client, disconnect, shared_client
from messenger.realtime.presence import PresenceBoard


@pytest.fixture
def sentinel_url(tmp_path: Path) -> Iterator[str]:
    primary = EmbeddedRedis(tmp_path / "primary", free_port(), persistent=False)
    primary.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {primary.port} 1\n"
        f"sentinel auth-pass mymaster {primary.password}\n"
    )
    sentinel = subprocess.Popen(
        [str(find_redis_server().path), str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis_lib.Redis("127.0.0.1", port, socket_timeout=1)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"
                ):
                    break
            except redis_lib.RedisError:
                pass
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.05)
        client.close()
        # The primary's password (the embedded Redis requires one) in the URL.
        secret = quote(primary.password, safe="")
        yield f"redis+sentinel://:{secret}@127.0.0.1:{port}/mymaster/0"
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        primary.stop()


def test_sentinel_url_reaches_the_primary_for_commands_and_blocking_pops(
    sentinel_url: str,
) -> None:
    shared = shared_client(sentinel_url, 4)
    blocking = blocking_client(sentinel_url, 1)
    try:
        shared.rpush("wake:sentinel-test", b"7")
        assert blocking.blpop(["wake:sentinel-test"], timeout=1) == (
            b"wake:sentinel-test",
            b"7",
        )
        board = PresenceBoard(shared)
        assert board.touch({7: 1000.0}) == [7]
        assert board.last_seen([7, 8]) == {7: 1000.0}
        assert board.pop_offline(2000.0) == [(7, 1000.0)]
    finally:
        disconnect(shared)
        disconnect(blocking)
