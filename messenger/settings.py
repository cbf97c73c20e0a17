"""Settings, read once from MESSENGER_* environment variables.

The Settings dataclass is the one declaration of every setting: each field is
made with setting(), which gives its default, its bounds and its line of help.
load() reads the environment from it, and markdown_table() writes the README's
configuration table from it; RATE_LIMIT_DEFAULTS likewise gives the README's
rate limit table (`python -m messenger.settings --markdown [rate-limits]`; a
test checks the README holds both). A bad value stops start-up with one
sentence naming the variable (ConfigError). Nothing else in the package reads
os.environ.

To add a setting: add a field with setting() (a custom `read` only when the type
alone does not say how to parse it), then regenerate the README's table.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar

PREFIX = "MESSENGER_"

# NAT boxes and old proxies drop HTTP connections idle for ~60 s; stay under that.
POLL_TIMEOUT_MAX_SECS = 55
POLL_TIMEOUT_DEFAULT_SECS = 25

T = TypeVar("T")
# Reads a variable's non-empty text: (variable name, text, the settings read
# before it) → the value. Raises ConfigError.
Reader = Callable[[str, str, Mapping[str, Any]], Any]


class ConfigError(Exception):
    """An invalid configuration value; the message is one sentence."""


@dataclass(frozen=True)
class ShardRange:
    """Logical shards first..last (inclusive) live in the database at dsn."""

    first: int
    last: int
    dsn: str


@dataclass(frozen=True)
class Spec:
    """How one setting is read from its variable and shown in the README."""

    help: str
    lo: float | None = None
    # A number, or the name of an earlier setting bounding this one (the default
    # is then lowered to it when larger).
    hi: float | str | None = None
    min_length: int = 0
    choices: tuple[str, ...] = ()
    # The README's default when the value itself doesn't say it.
    shown: str | None = None
    read: Reader | None = None


def setting(
    default: T,
    help: str,
    *,
    lo: float | None = None,
    hi: float | str | None = None,
    min_length: int = 0,
    choices: tuple[str, ...] = (),
    shown: str | None = None,
    read: Reader | None = None,
) -> T:
    """A Settings field read from MESSENGER_<FIELD NAME IN CAPITALS>."""
    spec = Spec(help, lo, hi, min_length, choices, shown, read)
    return field(default=default, metadata={"setting": spec})


_DSN_RE = re.compile(r"^postgres(ql)?://")


def _dsn(name: str, value: str) -> str:
    if not _DSN_RE.match(value):
        raise ConfigError(f"{name} must be a postgresql:// URL, not {value[:40]!r}.")
    return value


def _read_dsn(name: str, raw: str, earlier: Mapping[str, Any]) -> str:
    return _dsn(name, raw)


def _read_redis_url(name: str, raw: str, earlier: Mapping[str, Any]) -> str:
    if not re.match(r"^(rediss?|redis\+cluster|redis\+sentinel)://", raw):
        raise ConfigError(
            f"{name} must be a redis://, rediss://, redis+cluster:// or "
            "redis+sentinel:// URL."
        )
    # Imported here: settings must stay importable without redis-py's modules.
    from messenger.realtime.redis_urls import parse_redis_url

    try:
        parse_redis_url(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return raw


def _read_shard_map(
    name: str, raw: str, earlier: Mapping[str, Any]
) -> tuple[ShardRange, ...]:
    return parse_shard_map(raw, earlier["shards"])


def _read_databases(
    name: str, raw: str, earlier: Mapping[str, Any]
) -> tuple[tuple[str, str], ...]:
    return parse_databases(raw)


def _read_rate_limits(name: str, raw: str, earlier: Mapping[str, Any]) -> str:
    text = raw.strip() or "on"
    parse_rate_limits(text)  # a bad value stops start-up
    return text


def _read_dns_server(name: str, raw: str, earlier: Mapping[str, Any]) -> str:
    text = raw.strip()
    if text and not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+)(:\d{1,5})?$", text):
        raise ConfigError(
            f"{name} must be an IP address with an optional :port, not {text[:40]!r}."
        )
    return text


def _read_blob_store(name: str, raw: str, earlier: Mapping[str, Any]) -> str:
    if raw.startswith("s3://"):
        if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/|\?|$)", raw):
            raise ConfigError(
                f"{name} must look like s3://bucket?endpoint=..., not {raw[:40]!r}."
            )
        return raw
    if raw.startswith("file:///"):
        return raw
    raise ConfigError(f"{name} must be an s3:// or file:/// URL, not {raw[:40]!r}.")


def _read_accel_prefix(name: str, raw: str, earlier: Mapping[str, Any]) -> str:
    if not re.match(r"^/[A-Za-z0-9_/-]*/\Z", raw):
        raise ConfigError(
            f"{name} must be an internal location of nginx such as "
            f"/_attachments/, not {raw[:40]!r}."
        )
    return raw


def _read_log_level(name: str, raw: str, earlier: Mapping[str, Any]) -> str:
    return raw.upper()


def _read_origins(name: str, raw: str, earlier: Mapping[str, Any]) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(
                f"{name} entries must look like https://host[:port], not {origin!r}."
            )
    return origins


@dataclass(frozen=True)
class Settings:
    """Every setting; the field `shards` is read from MESSENGER_SHARDS, and so on.

    Fields are read in this order: a bound or a parser may use those above it.
    """

    database_url: str | None = setting(
        None,
        "one PostgreSQL for the directory and every shard, "
        "`postgresql://user:pw@host:port/db`",
        shown="– (embedded)",
        read=_read_dsn,
    )
    shards: int = setting(
        64,
        "logical shards N (`shard = id % N`); fixed for the life of a deployment",
        lo=1,
        hi=4096,
    )
    shard_map: tuple[ShardRange, ...] = setting(
        (),
        "several databases: `0-31=postgresql://a/db;32-63=postgresql://b/db` "
        "(must cover every shard once)",
        read=_read_shard_map,
    )
    directory_url: str | None = setting(
        None,
        "the directory (global ids, handles, the shard map)",
        shown="first shard's database",
        read=_read_dsn,
    )
    databases: tuple[tuple[str, str], ...] = setting(
        (),
        "the physical databases by name, "
        "`main=postgresql://a/db;second=postgresql://b/db`: the shard map in the "
        "directory names them (`messenger shards`)",
        shown="named after the URLs above",
        read=_read_databases,
    )
    redis_url: str | None = setting(
        None,
        "`redis://host:port/db`; a Redis Cluster: `redis+cluster://h:p,h:p`; "
        "Sentinel: `redis+sentinel://h:p,h:p/service[/db]`",
        shown="– (embedded)",
        read=_read_redis_url,
    )
    node_name: str = setting(
        "",
        "this host's name in worker ids, logs and `/readyz` (distinct per host)",
        shown="the hostname",
    )
    secret_key: str = setting(
        "", "at least 16 characters", min_length=16, shown="random per process"
    )
    host: str = setting("127.0.0.1", "where gunicorn listens")
    port: int = setting(8000, "the port gunicorn listens on", lo=1, hi=65535)
    workers: int = setting(
        0,
        "gunicorn gevent workers (`0`: the CPU count)",
        lo=0,
        hi=256,
        shown="CPU count",
    )
    data_dir: Path = setting(Path("var"), "embedded PostgreSQL and Redis data")
    embedded_pg_port: int = setting(
        55432, "port of the embedded PostgreSQL", lo=1, hi=65535
    )
    embedded_redis_port: int = setting(
        56379, "port of the embedded Redis", lo=1, hi=65535
    )
    poll_timeout_max_secs: int = setting(
        POLL_TIMEOUT_MAX_SECS,
        "the largest `timeout` accepted (NAT boxes drop idle connections at ~60 s)",
        lo=1,
        hi=300,
    )
    poll_timeout_default_secs: int = setting(
        POLL_TIMEOUT_DEFAULT_SECS,
        "long-poll timeout when the client gives none",
        lo=0,
        hi="poll_timeout_max_secs",
    )
    max_polls_per_user: int = setting(
        8,
        "polls of one user held at once per worker; the oldest is answered early",
        lo=1,
        hi=1000,
    )
    event_retention_days: int = setting(
        30,
        "events older than this are trimmed; older cursors get 410",
        lo=1,
        hi=3650,
    )
    session_idle_days: int = setting(
        30,
        "a session unused for this many days expires (401)",
        lo=1,
        hi=3650,
    )
    db_pool_size: int = setting(
        10, "connections per physical database per worker", lo=1, hi=500
    )
    db_checkout_timeout_secs: float = setting(
        2.0, "waiting longer for a connection answers 503", lo=0.05, hi=60
    )
    db_connect_timeout_secs: int = setting(
        3, "bound on connecting to PostgreSQL", lo=1, hi=60
    )
    db_statement_timeout_ms: int = setting(
        15_000, "PostgreSQL `statement_timeout`", lo=100, hi=600_000
    )
    search_timeout_ms: int = setting(
        2_000,
        "a search's own statement timeout: a query too broad to finish in it "
        "answers 422",
        lo=50,
        hi="db_statement_timeout_ms",
    )
    redis_pool_size: int = setting(
        200,
        "Redis connections per worker (the dispatcher has its own)",
        lo=2,
        hi=10_000,
    )
    sweeper_interval_secs: float = setting(
        2.0, "how often each worker looks for unfinished fan-outs", lo=0.05, hi=3600
    )
    presence_grace_secs: float = setting(
        30.0,
        "a user is online while a poll is held and this long after one was "
        "answered (API.md)",
        lo=0.1,
        hi=3600,
    )
    trusted_proxies: int = setting(
        0,
        "proxies in front (nginx: `1`); only then are `X-Forwarded-*` trusted",
        lo=0,
        hi=10,
    )
    cors_origins: tuple[str, ...] = setting(
        (),
        "comma-separated origins allowed to call the API from a browser",
        shown="– (none)",
        read=_read_origins,
    )
    rate_limits: str = setting(
        "on",
        "`on` (the defaults below), `off` (none: benchmarks, test rigs), or "
        "overrides such as `send=60/10s,login=5/1m,typing=off`",
        read=_read_rate_limits,
    )
    metrics_token: str = setting(
        "",
        "a bearer token (16+ characters) that may read `/metrics` besides users' "
        "tokens: give it to Prometheus",
        min_length=16,
    )
    # gunicorn.conf.py sets it to a temporary folder when unset; None in a
    # single process.
    metrics_dir: Path | None = setting(
        None,
        "where gunicorn's workers keep their metric files; cleared at start",
        shown="a temporary folder (in /dev/shm when there is one)",
    )
    push_allow_private: bool = setting(
        False, "`1` allows webhook URLs on loopback/private addresses"
    )
    push_dns_server: str = setting(
        "",
        "`host` or `host:port` of the DNS server webhook host names are looked up "
        "at (asynchronously, never on the password-hashing threads)",
        shown="– (the system's, /etc/resolv.conf)",
        read=_read_dns_server,
    )
    push_coalesce_secs: float = setting(
        3.0,
        "messages to one offline member in one conversation within this window "
        "make one push (`0`: no coalescing)",
        lo=0,
        hi=60,
    )
    push_max_attempts: int = setting(
        6, "tries per push and device before it is dead-lettered", lo=1, hi=50
    )
    # Retry n waits about base * 2**(n-1) seconds (jittered, capped).
    push_backoff_base_secs: float = setting(
        2.0,
        "the wait after the first failure; it doubles after each (jittered, at "
        "most 10 min)",
        lo=0.01,
        hi=3600,
    )
    push_timeout_secs: float = setting(
        5.0, "connect and read timeout of a webhook call", lo=0.1, hi=60
    )
    push_concurrency: int = setting(
        10, "deliveries in flight per push worker process", lo=1, hi=1000
    )
    attachment_store: str = setting(
        "",
        "where attachment bytes live: `s3://bucket/prefix?endpoint=http://host:port"
        "&region=r` (credentials: boto3's `AWS_*` variables) or `file:///path`",
        shown="`<data dir>/attachments`",
        read=_read_blob_store,
    )
    attachment_max_bytes: int = setting(
        25 * 1024 * 1024,
        "the largest upload (bytes); larger ones get 413",
        lo=1,
        hi=2**40,
    )
    attachment_unsent_hours: float = setting(
        24.0,
        "uploads no message carries are removed after this long "
        "(`messenger gc-attachments`, and hourly in every worker)",
        lo=0.01,
        hi=24 * 365,
    )
    attachment_accel_redirect: str = setting(
        "",
        "nginx's internal location of the attachment folder (`/_attachments/`, see "
        "deploy/nginx.conf): downloads are then sent by nginx (X-Accel-Redirect); "
        "folder store only",
        shown="– (the app sends them)",
        read=_read_accel_prefix,
    )
    log_level: str = setting(
        "INFO",
        "`DEBUG`, `INFO`, `WARNING`, `ERROR`",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        read=_read_log_level,
    )
    log_json: bool = setting(True, "one JSON object per log line")

    @property
    def is_embedded(self) -> bool:
        """No database or Redis configured: `messenger run` starts local ones."""
        return (
            not (self.database_url or self.shard_map or self.databases)
            or not self.redis_url
        )

    def resolved_shard_map(self) -> tuple[ShardRange, ...]:
        """The shard map a new deployment's directory is seeded with: the
        shard map, or one range covering every shard on database_url (else on
        the first of MESSENGER_DATABASES)."""
        if self.shard_map:
            return self.shard_map
        if self.database_url:
            return (ShardRange(0, self.shards - 1, self.database_url),)
        if self.databases:
            return (ShardRange(0, self.shards - 1, self.databases[0][1]),)
        raise ConfigError(
            "MESSENGER_DATABASE_URL, MESSENGER_SHARD_MAP or MESSENGER_DATABASES "
            "must be set."
        )

    def resolved_directory_url(self) -> str:
        """The directory database: MESSENGER_DIRECTORY_URL or the first shard's."""
        if self.directory_url:
            return self.directory_url
        if self.database_url or self.shard_map:
            return self.resolved_shard_map()[0].dsn
        if self.databases:
            return self.databases[0][1]
        raise ConfigError(
            "MESSENGER_DATABASE_URL, MESSENGER_SHARD_MAP or MESSENGER_DATABASES "
            "must be set."
        )

    def resolved_databases(self) -> dict[str, str]:
        """Every physical database by name: MESSENGER_DATABASES, plus the URLs of
        MESSENGER_DATABASE_URL / SHARD_MAP / DIRECTORY_URL it does not name,
        each named after its database (`postgresql://h/m1` → `m1`)."""
        named = dict(self.databases)
        urls: list[str] = []
        if self.database_url or self.shard_map:
            urls.extend(r.dsn for r in self.resolved_shard_map())
        if self.directory_url:
            urls.append(self.directory_url)
        for url in urls:
            if url in named.values():
                continue
            base = database_name_of(url)
            name, n = base, 2
            while name in named:
                name, n = f"{base}{n}", n + 1
            named[name] = url
        return named


_DB_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def database_name_of(dsn: str) -> str:
    """A database's default name in the shard map: its name in the URL."""
    path = dsn.split("?", 1)[0].rsplit("/", 1)[-1].lower()
    name = re.sub(r"[^a-z0-9_]", "_", path) or "main"
    return name if _DB_NAME_RE.match(name) else f"db_{name}"[:40]


def check_database_name(variable_name: str, name: str) -> str:
    """A database name of the shard map: lowercase letters, digits, `_`."""
    if not _DB_NAME_RE.match(name):
        raise ConfigError(
            f"{variable_name}: a database name is 1-40 lowercase letters, digits "
            f"and _, starting with a letter, not {name[:40]!r}."
        )
    return name


def parse_databases(raw: str) -> tuple[tuple[str, str], ...]:
    """Parse "main=postgresql://a/db;second=postgresql://b/db" (names unique)."""
    name = "MESSENGER_DATABASES"
    result: list[tuple[str, str]] = []
    for part in filter(None, (p.strip() for p in raw.split(";"))):
        db_name, sep, dsn = part.partition("=")
        if not sep:
            raise ConfigError(
                f"{name} entries look like main=postgresql://..., not {part[:40]!r}."
            )
        db_name = check_database_name(name, db_name.strip())
        if any(db_name == n for n, _ in result):
            raise ConfigError(f"{name} names {db_name!r} twice.")
        result.append((db_name, _dsn(name, dsn.strip())))
    return tuple(result)


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


@dataclass(frozen=True)
class DefaultRateLimit:
    """A default of MESSENGER_RATE_LIMITS, with what the README says of it."""

    limit: RateLimit
    # Whose requests count together (the subject ratelimit.check is given).
    per: str
    slows: str


# The README's rate limit table is made from these (rate_limits_table()).
RATE_LIMIT_DEFAULTS: Mapping[str, DefaultRateLimit] = {
    "send": DefaultRateLimit(RateLimit(30, 10), "user", "message floods"),
    "typing": DefaultRateLimit(RateLimit(20, 10), "user", "runaway clients"),
    # Typing indicators last seconds; more than one a second per conversation is
    # a client bug, not a person typing.
    "typing_conversation": DefaultRateLimit(
        RateLimit(1, 1),
        "user and conversation",
        "typing indicators repeated faster than anyone types",
    ),
    "conversation": DefaultRateLimit(
        RateLimit(30, 60), "user", "creating conversations"
    ),
    "search": DefaultRateLimit(
        RateLimit(30, 60), "user", "searches that read a whole mailbox each"
    ),
    # Edits and deletes count together: both rewrite what others already read.
    "edit": DefaultRateLimit(RateLimit(30, 10), "user", "edit and delete floods"),
    "reaction": DefaultRateLimit(RateLimit(60, 10), "user", "reaction floods"),
    "register": DefaultRateLimit(
        RateLimit(20, 3600), "client address", "account farming"
    ),
    "login": DefaultRateLimit(
        RateLimit(20, 60), "client address", "password guessing from one address"
    ),
    # Guessing one account's password from one address.
    "login_handle_address": DefaultRateLimit(
        RateLimit(5, 300),
        "handle tried and client address",
        "guessing one account's password from one address",
    ),
    # Over this, only a correct password from an address the handle logged in
    # from before gets through (services/accounts.py), so strangers guessing from
    # many addresses cannot lock the owner out.
    "login_handle": DefaultRateLimit(
        RateLimit(30, 3600),
        "handle tried",
        "guessing one account's password from many addresses; past it, only a "
        "correct password from an address that logged in before passes",
    ),
    "group_change": DefaultRateLimit(
        RateLimit(20, 60),
        "user",
        "renaming a group, adding or removing members, deleting groups in a loop",
    ),
    "group_change_conversation": DefaultRateLimit(
        RateLimit(30, 60),
        "conversation",
        "several members churning one group (each change wakes every member)",
    ),
    "device": DefaultRateLimit(
        RateLimit(10, 3600), "user", "registering push devices in a loop"
    ),
    # A burst of photos fits; a loop filling the attachment store does not.
    "upload": DefaultRateLimit(
        RateLimit(100, 3600), "user", "attachment uploads (POST /v1/attachments)"
    ),
    "password": DefaultRateLimit(
        RateLimit(10, 3600),
        "user",
        "guessing the current password through a stolen session",
    ),
    "people_search": DefaultRateLimit(
        RateLimit(60, 60), "user", "walking the user directory by prefixes"
    ),
}
DEFAULT_RATE_LIMITS: Mapping[str, RateLimit] = {
    name: default.limit for name, default in RATE_LIMIT_DEFAULTS.items()
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


def variable(name: str) -> str:
    """The environment variable of a Settings field: shards → MESSENGER_SHARDS."""
    return PREFIX + name.upper()


def _spec(f: Any) -> Spec:
    spec = f.metadata["setting"]
    assert isinstance(spec, Spec), f.name
    return spec


def _value_type(name: str) -> Any:
    """The field's type without its `| None`."""
    hint = typing.get_type_hints(Settings)[name]
    if isinstance(hint, UnionType):
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _bound(spec_bound: float | str | None, earlier: Mapping[str, Any]) -> Any:
    return earlier[spec_bound] if isinstance(spec_bound, str) else spec_bound


def _read_typed(
    name: str, raw: str, kind: Any, spec: Spec, earlier: Mapping[str, Any]
) -> Any:
    if kind is bool:
        text = raw.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be 1 or 0 (true/false), not {text!r}.")
    if kind is int or kind is float:
        try:
            value = kind(raw)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"{name} must be {what}, not {raw!r}.") from None
        lo, hi = _bound(spec.lo, earlier), _bound(spec.hi, earlier)
        # Written so that NaN is out of bounds too.
        if not lo <= value <= hi:
            raise ConfigError(f"{name} must be between {lo} and {hi}, not {value}.")
        return value
    if kind is Path:
        return Path(raw)
    if kind is str:
        return raw
    raise TypeError(f"{name}: give setting() a read= for {kind!r}")


def _default(f: Any, earlier: Mapping[str, Any]) -> Any:
    spec = _spec(f)
    if isinstance(spec.hi, str):
        return min(f.default, earlier[spec.hi])
    return f.default


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment; an unset or empty variable keeps
    the default.

    Raises:
        ConfigError: a value is invalid (the message names the variable).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(Settings):
        spec, name = _spec(f), variable(f.name)
        raw = env.get(name)
        if (
            raw is None
            or raw == ""
            or (_value_type(f.name) is bool and not raw.strip())
        ):
            values[f.name] = _default(f, values)
            continue
        if spec.read is not None:
            value = spec.read(name, raw, values)
        else:
            value = _read_typed(name, raw, _value_type(f.name), spec, values)
        if spec.min_length and len(value) < spec.min_length:
            raise ConfigError(f"{name} must be at least {spec.min_length} characters.")
        if spec.choices and value not in spec.choices:
            *first, last = spec.choices
            raise ConfigError(f"{name} must be {', '.join(first)} or {last}.")
        values[f.name] = value
    if not values["secret_key"]:
        # Only signs nothing persistent today; a random key per process is safe.
        values["secret_key"] = secrets.token_hex(32)
    return Settings(**values)


def _shown_default(f: Any) -> str:
    spec = _spec(f)
    if spec.shown is not None:
        return spec.shown
    value = f.default
    if value in (None, (), ""):
        return "–"
    if isinstance(value, bool | float) and value == int(value):
        value = int(value)
    return f"`{value}`"


def _window(secs: int) -> str:
    if secs % 3600 == 0:
        return f"{secs // 3600} h"
    if secs > 60 and secs % 60 == 0:
        return f"{secs // 60} min"
    return f"{secs} s"


def rate_limits_table() -> str:
    """The README's table of the default rate limits."""
    lines = ["| name | default | per | what it slows |", "|---|---|---|---|"]
    for name, default in RATE_LIMIT_DEFAULTS.items():
        limit = default.limit
        lines.append(
            f"| `{name}` | {limit.count} / {_window(limit.window_secs)} | "
            f"{default.per} | {default.slows} |"
        )
    return "\n".join(lines) + "\n"


def markdown_table() -> str:
    """The README's configuration table: every variable, its default, its help."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        spec = _spec(f)
        lines.append(f"| `{variable(f.name)}` | {_shown_default(f)} | {spec.help} |")
    return "\n".join(lines) + "\n"


TABLES = {"settings": markdown_table, "rate-limits": rate_limits_table}


def main(argv: list[str] | None = None) -> None:
    """`python -m messenger.settings --markdown [settings|rate-limits]`."""
    parser = argparse.ArgumentParser(
        prog="python -m messenger.settings",
        description="Print a README table made from the declared settings.",
    )
    parser.add_argument(
        "--markdown", choices=sorted(TABLES), nargs="?", const="settings", required=True
    )
    sys.stdout.write(TABLES[parser.parse_args(argv).markdown]())


if __name__ == "__main__":
    main()
