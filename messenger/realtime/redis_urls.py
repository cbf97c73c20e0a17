"""What a MESSENGER_REDIS_URL names: plain, Redis Cluster or Sentinel.

No redis-py import here: settings.py validates the URL with it, and gunicorn.conf.py
loads the settings before gevent patches the standard library (redis-py's modules
import ssl).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

PLAIN, CLUSTER, SENTINEL = "plain", "cluster", "sentinel"


@dataclass(frozen=True)
class RedisTarget:
    """What a MESSENGER_REDIS_URL names."""

    kind: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    password: str | None = None
    username: str | None = None


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a plain, `redis+cluster://` or `redis+sentinel://` URL.

    Raises:
        ValueError: a malformed URL (the message is one sentence).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url[:40]!r} is not a URL.")
    if scheme in ("redis", "rediss", "unix"):
        return RedisTarget(PLAIN, url)
    if scheme not in ("redis+cluster", "redis+sentinel"):
        raise ValueError(f"unknown Redis URL scheme {scheme!r}.")
    # Several hosts: urlsplit cannot read "a:1,b:2" as a netloc port, so split here.
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user_part, colon, pw_part = auth.partition(":")
        username = unquote(user_part) or None
        password = unquote(pw_part) if colon else None
    nodes = []
    for part in filter(None, netloc.split(",")):
        host, colon, port = part.rpartition(":")
        if not colon or not port.isdigit() or not host:
            raise ValueError(f"Redis node {part!r} must look like host:port.")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ValueError("a cluster or sentinel URL names at least one host:port.")
    segments = [s for s in urlsplit("x://h/" + path).path.split("/") if s]
    if scheme == "redis+cluster":
        if segments:
            raise ValueError("a Redis Cluster has only database 0: drop the path.")
        return RedisTarget(CLUSTER, url, tuple(nodes), "", 0, password, username)
    if not segments or len(segments) > 2:
        raise ValueError("a sentinel URL ends with /service or /service/db.")
    db = segments[1] if len(segments) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"the database number {db!r} is not a number.")
    return RedisTarget(
        SENTINEL, url, tuple(nodes), unquote(segments[0]), int(db), password, username
    )
