"""Settings, read once from MESSENGER_* environment variables.

Every variable is listed in the README's configuration table. A bad value stops
start-up with one sentence naming the variable (ConfigError). Nothing else in the
package reads os.environ.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# NAT boxes and old proxies drop HTTP connections idle for ~60 s; stay under that.
POLL_TIMEOUT_MAX_SECS = 55
POLL_TIMEOUT_DEFAULT_SECS = 25


class ConfigError(Exception):
    """An invalid configuration value; the message is one sentence."""


@dataclass(frozen=True)
class ShardRange:
    """Logical shards first..last (inclusive) live in the database at dsn."""

    first: int
    last: int
    dsn: str


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    shard_map: tuple[ShardRange, ...] = ()
    directory_url: str | None = None
    redis_url: str | None = None
    shards: int = 64
    secret_key: str = ""
    poll_timeout_default_secs: int = POLL_TIMEOUT_DEFAULT_SECS
    poll_timeout_max_secs: int = POLL_TIMEOUT_MAX_SECS
    event_retention_days: int = 30
    db_pool_size: int = 10
    db_checkout_timeout_secs: float = 2.0
    db_connect_timeout_secs: int = 3
    db_statement_timeout_ms: int = 15_000
    redis_pool_size: int = 200
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 0  # 0: gunicorn.conf.py picks from the CPU count
    rate_limits: str = "on"
    # Where gunicorn's workers keep their metric files (gunicorn.conf.py sets it
    # to a temporary folder when unset); None in a single process.
    metrics_dir: Path | None = None
    # A bearer token for Prometheus to read /metrics without a user account.
    metrics_token: str = ""
    push_allow_private: bool = False
    # Messages to one offline user in one conversation within this window are
    # coalesced into one push.
    push_coalesce_secs: float = 3.0
    push_max_attempts: int = 6
    push_timeout_secs: float = 5.0
    # Retry n waits about base * 2**(n-1) seconds (jittered, capped).
    push_backoff_base_secs: float = 2.0
    push_concurrency: int = 10
    log_level: str = "INFO"
    log_json: bool = True
    # Polls of one user held at once on one worker; the oldest is answered early.
    max_polls_per_user: int = 8
    sweeper_interval_secs: float = 2.0
    # API.md: online = a poll held now or answered less than this long ago.
    presence_grace_secs: float = 30.0
    embedded_pg_port: int = 55432
    embedded_redis_port: int = 56379
    trusted_proxies: int = 0
    cors_origins: tuple[str, ...] = ()
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_embedded(self) -> bool:
        """No database or Redis configured: `messenger run` starts local ones."""
        return not (self.database_url or self.shard_map) or not self.redis_url

    def resolved_shard_map(self) -> tuple[ShardRange, ...]:
        """The shard map, or one range covering every shard on database_url."""
        if self.shard_map:
            return self.shard_map
        if not self.database_url:
            raise ConfigError(
                "MESSENGER_DATABASE_URL or MESSENGER_SHARD_MAP must be set."
            )
        return (ShardRange(0, self.shards - 1, self.database_url),)

    def resolved_directory_url(self) -> str:
        """The directory database: MESSENGER_DIRECTORY_URL or the first shard's."""
        return self.directory_url or self.resolved_shard_map()[0].dsn


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}.") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, not {value}.")
    return value


def _float(
    env: Mapping[str, str], name: str, default: float, lo: float, hi: float
) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}.") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, not {value}.")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (true/false), not {raw!r}.")


_DSN_RE = re.compile(r"^postgres(ql)?://")


def _dsn(name: str, value: str) -> str:
    if not _DSN_RE.match(value):
        raise ConfigError(f"{name} must be a postgresql:// URL, not {value[:40]!r}.")
    return value


def parse_shard_map(raw: str, shards: int) -> tuple[ShardRange, ...]:
    """Parse "0-31=postgresql://a/db;32-63=postgresql://b/db".

    Every logical shard must be covered exactly once.
    """
    name = "MESSENGER_SHARD_MAP"
    ranges: list[ShardRange] = []
    for part in filter(None, (p.strip() for p in raw.split(";"))):
        span, sep, dsn = part.partition("=")
        if not sep:
            raise ConfigError(
                f"{name} entries look like 0-31=postgresql://..., not {part[:40]!r}."
            )
        first_s, _, last_s = span.strip().partition("-")
        try:
            first = int(first_s)
            last = int(last_s) if last_s else first
        except ValueError:
            raise ConfigError(f"{name} has a bad shard range {span!r}.") from None
        ranges.append(ShardRange(first, last, _dsn(name, dsn.strip())))
    ranges.sort(key=lambda r: r.first)
    expected = 0
    for r in ranges:
        if r.first != expected or r.last < r.first:
            raise ConfigError(
                f"{name} must cover shards 0..{shards - 1} exactly once in "
                f"contiguous ranges; shard {expected} is missing or repeated."
            )
        expected = r.last + 1
    if expected != shards:
        raise ConfigError(
            f"{name} must cover shards 0..{shards - 1}; it ends at {expected - 1}."
        )
    return tuple(ranges)


@dataclass(frozen=True)
class RateLimit:
    """At most `count` requests per `window_secs` (sliding window) per subject."""

    count: int
    window_secs: int


# Defaults of MESSENGER_RATE_LIMITS (the README lists them). Subjects: the user
# for send/typing/conversation, the user and conversation for
# typing_conversation; the client IP for register/login; the handle
# tried for login_handle (slows guessing one account's password from many IPs).
DEFAULT_RATE_LIMITS: Mapping[str, RateLimit] = {
    "send": RateLimit(30, 10),
    "typing": RateLimit(20, 10),
    # Typing indicators last seconds; more than one a second per conversation is
    # a client bug, not a person typing.
    "typing_conversation": RateLimit(1, 1),
    "conversation": RateLimit(30, 60),
    "register": RateLimit(20, 3600),
    "login": RateLimit(20, 60),
    "login_handle": RateLimit(10, 300),
}
_WINDOW_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
_RATE_RE = re.compile(r"^(\d{1,9})/(\d{1,6})([smh]?)$")


def parse_rate_limits(raw: str) -> dict[str, RateLimit]:
    """Parse MESSENGER_RATE_LIMITS: "on" (the defaults), "off" (none), or
    entries overriding the defaults: "send=30/10s,login=5/1m,typing=off".
    """
    name = "MESSENGER_RATE_LIMITS"
    text = raw.strip().lower()
    if text in ("off", "0", "false", "no"):
        return {}
    limits = dict(DEFAULT_RATE_LIMITS)
    if text in ("", "on", "1", "true", "yes"):
        return limits
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (x.strip() for x in part.partition("="))
        if not sep or key not in DEFAULT_RATE_LIMITS:
            raise ConfigError(
                f"{name} entries look like send=30/10s with a name among "
                f"{', '.join(DEFAULT_RATE_LIMITS)}, not {part[:40]!r}."
            )
        if value == "off":
            limits.pop(key, None)
            continue
        match = _RATE_RE.match(value)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise ConfigError(
                f"{name}: {key} must look like COUNT/WINDOW (30/10s, 5/1m, "
                f"100/1h) or off, not {value[:40]!r}."
            )
        window_secs = int(match[2]) * _WINDOW_UNITS[match[3]]
        limits[key] = RateLimit(int(match[1]), window_secs)
    return limits


def _metrics_token(env: Mapping[str, str]) -> str:
    token = env.get("MESSENGER_METRICS_TOKEN", "")
    if token and len(token) < 16:
        raise ConfigError("MESSENGER_METRICS_TOKEN must be at least 16 characters.")
    return token


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment.

    Raises:
        ConfigError: a value is invalid (the message names the variable).
    """
    env = os.environ if env is None else env
    shards = _int(env, "MESSENGER_SHARDS", 64, 1, 4096)
    database_url = env.get("MESSENGER_DATABASE_URL") or None
    if database_url:
        _dsn("MESSENGER_DATABASE_URL", database_url)
    shard_map: tuple[ShardRange, ...] = ()
    if env.get("MESSENGER_SHARD_MAP"):
        shard_map = parse_shard_map(env["MESSENGER_SHARD_MAP"], shards)
    directory_url = env.get("MESSENGER_DIRECTORY_URL") or None
    if directory_url:
        _dsn("MESSENGER_DIRECTORY_URL", directory_url)
    redis_url = env.get("MESSENGER_REDIS_URL") or None
    if redis_url and not re.match(r"^rediss?://", redis_url):
        raise ConfigError("MESSENGER_REDIS_URL must be a redis:// or rediss:// URL.")
    poll_max = _int(
        env, "MESSENGER_POLL_TIMEOUT_MAX_SECS", POLL_TIMEOUT_MAX_SECS, 1, 300
    )
    poll_default = _int(
        env,
        "MESSENGER_POLL_TIMEOUT_DEFAULT_SECS",
        min(POLL_TIMEOUT_DEFAULT_SECS, poll_max),
        0,
        poll_max,
    )
    rate_limits = env.get("MESSENGER_RATE_LIMITS", "on").strip() or "on"
    parse_rate_limits(rate_limits)  # a bad value stops start-up
    secret_key = env.get("MESSENGER_SECRET_KEY", "")
    if secret_key and len(secret_key) < 16:
        raise ConfigError("MESSENGER_SECRET_KEY must be at least 16 characters.")
    if not secret_key:
        # Only signs nothing persistent today; a random key per process is safe.
        secret_key = secrets.token_hex(32)
    log_level = env.get("MESSENGER_LOG_LEVEL", "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("MESSENGER_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR.")
    cors = tuple(
        o.strip().rstrip("/")
        for o in env.get("MESSENGER_CORS_ORIGINS", "").split(",")
        if o.strip()
    )
    for origin in cors:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(
                f"MESSENGER_CORS_ORIGINS entries must look like https://host[:port], "
                f"not {origin!r}."
            )
    return Settings(
        database_url=database_url,
        shard_map=shard_map,
        directory_url=directory_url,
        redis_url=redis_url,
        shards=shards,
        secret_key=secret_key,
        poll_timeout_default_secs=poll_default,
        poll_timeout_max_secs=poll_max,
        event_retention_days=_int(env, "MESSENGER_EVENT_RETENTION_DAYS", 30, 1, 3650),
        db_pool_size=_int(env, "MESSENGER_DB_POOL_SIZE", 10, 1, 500),
        db_checkout_timeout_secs=_float(
            env, "MESSENGER_DB_CHECKOUT_TIMEOUT_SECS", 2.0, 0.05, 60
        ),
        db_connect_timeout_secs=_int(
            env, "MESSENGER_DB_CONNECT_TIMEOUT_SECS", 3, 1, 60
        ),
        db_statement_timeout_ms=_int(
            env, "MESSENGER_DB_STATEMENT_TIMEOUT_MS", 15_000, 100, 600_000
        ),
        redis_pool_size=_int(env, "MESSENGER_REDIS_POOL_SIZE", 200, 2, 10_000),
        data_dir=Path(env.get("MESSENGER_DATA_DIR") or "var"),
        host=env.get("MESSENGER_HOST") or "127.0.0.1",
        port=_int(env, "MESSENGER_PORT", 8000, 1, 65535),
        workers=_int(env, "MESSENGER_WORKERS", 0, 0, 256),
        rate_limits=rate_limits,
        metrics_dir=Path(env["MESSENGER_METRICS_DIR"])
        if env.get("MESSENGER_METRICS_DIR")
        else None,
        metrics_token=_metrics_token(env),
        push_allow_private=_bool(env, "MESSENGER_PUSH_ALLOW_PRIVATE", False),
        push_coalesce_secs=_float(env, "MESSENGER_PUSH_COALESCE_SECS", 3.0, 0, 60),
        push_max_attempts=_int(env, "MESSENGER_PUSH_MAX_ATTEMPTS", 6, 1, 50),
        push_timeout_secs=_float(env, "MESSENGER_PUSH_TIMEOUT_SECS", 5.0, 0.1, 60),
        push_backoff_base_secs=_float(
            env, "MESSENGER_PUSH_BACKOFF_BASE_SECS", 2.0, 0.01, 3600
        ),
        push_concurrency=_int(env, "MESSENGER_PUSH_CONCURRENCY", 10, 1, 1000),
        log_level=log_level,
        log_json=_bool(env, "MESSENGER_LOG_JSON", True),
        max_polls_per_user=_int(env, "MESSENGER_MAX_POLLS_PER_USER", 8, 1, 1000),
        sweeper_interval_secs=_float(
            env, "MESSENGER_SWEEPER_INTERVAL_SECS", 2.0, 0.05, 3600
        ),
        presence_grace_secs=_float(
            env, "MESSENGER_PRESENCE_GRACE_SECS", 30.0, 0.1, 3600
        ),
        embedded_pg_port=_int(env, "MESSENGER_EMBEDDED_PG_PORT", 55432, 1, 65535),
        embedded_redis_port=_int(env, "MESSENGER_EMBEDDED_REDIS_PORT", 56379, 1, 65535),
        trusted_proxies=_int(env, "MESSENGER_TRUSTED_PROXIES", 0, 0, 10),
        cors_origins=cors,
        extra={k: v for k, v in env.items() if k.startswith("MESSENGER_")},
    )
