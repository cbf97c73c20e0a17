"""Sessions: bearer tokens on the user's shard, a per-worker cache of verified
tokens, and revocation that reaches every worker at once.

A token is "<user_id>.<secret>": the user id names the shard holding the session
(DESIGN.md "Tokens off the directory"), and only the SHA-256 of the whole token is
stored. A verified token is cached in this worker for CACHE_TTL_SECS, so a request
with a cached token does no I/O at all (the long poll path relies on it).

Revocation (logout, revoking one or all other sessions, a password change)
deletes the rows, drops the digests from this worker's cache and publishes them
(realtime/revocations.py); every other worker's listener drops them from its
cache. The cache serves only while its listener is subscribed, and is emptied
whenever the subscription is made again, so a revocation missed during a Redis
outage cannot leave a revoked token cached. A session unused for
MESSENGER_SESSION_IDLE_DAYS expires.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis

from messenger import metrics, runtime
from messenger.errors import NotFound, Unauthorized
from messenger.realtime import revocations
from messenger.storage import sessions as store

logger = logging.getLogger(__name__)

# A verified token is trusted this long without asking its shard again. Also
# the bound on how long a revocation could go unseen if its broadcast were lost
# while the listener still looked subscribed, and with SESSION_TOUCH_SECS it
# keeps `last_used_at` within the minute API.md allows.
CACHE_TTL_SECS = 30.0
# Entries per worker; the oldest are dropped beyond this.
CACHE_MAX_ENTRIES = 50_000
# API.md: a User-Agent is kept, cut to this many characters.
USER_AGENT_MAX_CHARS = 256
# "<user id>.<43 characters of base64url>"; user ids are positive bigints.
BIGINT_MAX = 2**63 - 1
_TOKEN_RE = re.compile(r"^([1-9][0-9]{0,18})\.([A-Za-z0-9_-]{20,100})\Z")


@dataclass(frozen=True)
class Verified:
    """What a valid token stands for."""

    user_id: int
    session_id: int


@dataclass(frozen=True)
class Session:
    session_id: int
    created_at: datetime
    last_used_at: datetime
    user_agent: str
    is_current: bool


@dataclass(frozen=True)
class _Entry:
    verified: Verified
    checked_at: float  # monotonic
    last_used_at: datetime


class TokenCache:
    """This worker's verified tokens, by digest. Serves only while `is_live()`
    (the revocation listener is subscribed); takes a clock for tests."""

    def __init__(
        self,
        ttl_secs: float = CACHE_TTL_SECS,
        max_entries: int = CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_secs = ttl_secs
        self.max_entries = max_entries
        self.clock = clock
        self.entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.is_live: Callable[[], bool] = lambda: False
        # Bumped by every drop and clear: an answer read from the database
        # before a revocation arrived must not be cached after it (put() takes
        # the generation seen before the read).
        self.generation = 0

    def get(self, digest: bytes, idle_cutoff: datetime) -> Verified | None:
        if not self.is_live():
            return None
        entry = self.entries.get(digest)
        if entry is None:
            return None
        if (
            self.clock() - entry.checked_at >= self.ttl_secs
            or entry.last_used_at <= idle_cutoff
        ):
            self.entries.pop(digest, None)
            return None
        return entry.verified

    def put(
        self,
        digest: bytes,
        verified: Verified,
        last_used_at: datetime,
        generation: int,
    ) -> None:
        if not self.is_live() or generation != self.generation:
            return
        self.entries[digest] = _Entry(verified, self.clock(), last_used_at)
        self.entries.move_to_end(digest)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def drop(self, digests: Iterable[bytes]) -> None:
        self.generation += 1
        for digest in digests:
            self.entries.pop(digest, None)

    def clear(self) -> None:
        self.generation += 1
        self.entries.clear()


# This worker's cache; the composition root connects it to a revocation
# listener (messenger/bootstrap.py). Until then it serves nothing.
token_cache = TokenCache()


def token_digest(token: str) -> bytes:
    """Sessions are stored by SHA-256 of the token; the token itself never is."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_token(user_id: int) -> str:
    """256 random bits behind the user id."""
    return f"{user_id}.{secrets.token_urlsafe(32)}"


def _idle_cutoff(idle_days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=idle_days)


def open_session(user_id: int, user_agent: str) -> str:
    """Store a new session of user_id; its bearer token."""
    token = new_token(user_id)
    with runtime.get().router.on_user(user_id, "open_session") as cur:
        store.insert(
            cur, token_digest(token), user_id, user_agent[:USER_AGENT_MAX_CHARS]
        )
    return token


def verify(token: str) -> Verified:
    """The user and session of a bearer token: no I/O when this worker verified
    it within CACHE_TTL_SECS, else one statement on the user's shard.

    Raises:
        Unauthorized: malformed, unknown, revoked or expired token (tokens of
            the first release, which carry no user id, included).
    """
    match = _TOKEN_RE.match(token) if token and len(token) <= 128 else None
    if match is None or int(match[1]) > BIGINT_MAX:
        raise Unauthorized()
    user_id = int(match[1])
    digest = token_digest(token)
    rt = runtime.get()
    idle_days = rt.settings.session_idle_days
    cached = token_cache.get(digest, _idle_cutoff(idle_days))
    if cached is not None:
        metrics.count_token_check(is_hit=True)
        return cached
    metrics.count_token_check(is_hit=False)
    generation = token_cache.generation
    # Timing: the token itself is never compared; the lookup probes an index
    # with its SHA-256 digest, and steering a digest toward a stored one is a
    # preimage search.
    with rt.router.on_user(user_id, "authenticate", transaction=False) as cur:
        found = store.check(cur, digest, user_id, idle_days)
    if found is None:
        raise Unauthorized()
    verified = Verified(user_id, found.session_id)
    token_cache.put(digest, verified, found.last_used_at, generation)
    return verified


def list_sessions(user_id: int, current_session_id: int) -> list[Session]:
    """The user's live sessions, newest first."""
    rt = runtime.get()
    with rt.router.on_user(user_id, "list_sessions") as cur:
        rows = store.list_live(cur, user_id, rt.settings.session_idle_days)
    return [
        Session(
            r.session_id,
            r.created_at,
            r.last_used_at,
            r.user_agent,
            r.session_id == current_session_id,
        )
        for r in rows
    ]


def revoke_token(user_id: int, token: str) -> None:
    """Log out: the token is refused at once, on every worker."""
    with runtime.get().router.on_user(user_id, "close_session") as cur:
        gone = store.delete_by_hash(cur, token_digest(token), user_id)
    _broadcast(gone or [token_digest(token)])


def revoke(user_id: int, session_id: int) -> None:
    """Revoke one session of the user, at once, on every worker.

    Raises:
        NotFound: the user has no such session.
    """
    with runtime.get().router.on_user(user_id, "revoke_session") as cur:
        gone = store.delete_by_id(cur, session_id, user_id)
    if not gone:
        raise NotFound("No such session.")
    _broadcast(gone)


def revoke_others(user_id: int, keep_session_id: int) -> int:
    """Revoke every session of the user but one; how many."""
    with runtime.get().router.on_user(user_id, "revoke_other_sessions") as cur:
        gone = store.delete_others(cur, user_id, keep_session_id)
    _broadcast(gone)
    return len(gone)


def _broadcast(digests: list[bytes]) -> None:
    """Drop revoked tokens here and tell the other workers.

    If Redis cannot take the message, the other workers' listeners are most
    likely cut off from it too, which stops their caches serving; at worst a
    worker still subscribed trusts its entry until CACHE_TTL_SECS passes.
    """
    token_cache.drop(digests)
    if not digests:
        return
    try:
        revocations.publish(runtime.get().redis, digests=digests)
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="revocations").inc()
        logger.warning("revocation broadcast failed: %s", exc)
