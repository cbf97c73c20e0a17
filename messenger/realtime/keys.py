"""Every Redis key name and TTL, in one place."""

from __future__ import annotations

# A worker refreshes its registrations this often while it holds a user's polls...
CONN_REFRESH_SECS = 20
# ...and a registration lives this long, so a dead worker stops receiving wakes
# about a minute after its last refresh.
CONN_TTL_SECS = 60
# A dead worker's wake list expires this long after the last push to it.
WAKE_LIST_TTL_SECS = 60
# A wake list keeps at most this many items (LTRIM after each push): a worker
# that is slow or gone cannot make Redis hold an unbounded list. Its dispatcher
# pops up to 500 at a time, so a live worker never comes near it; an item
# trimmed away only delays that poll until its next re-read.
WAKE_LIST_MAX = 10_000


def wake_list(worker_id: str) -> str:
    """The list a worker's dispatcher BLPOPs."""
    return f"wake:{worker_id}"


def connections(user_id: int) -> str:
    """Sorted set: worker ids holding the user's polls, scored by expiry time."""
    return f"conn:{user_id}"


# ---- presence ------------------------------------------------------------------

# Users announced online live in one of this many sorted sets (user_id % N), so
# the set is never one hot key and spreads over a Redis Cluster.
PRESENCE_BUCKETS = 16
# A user's last poll time outlives its online entry, for "last seen" answers;
# after this long without a poll it is forgotten (last_seen null).
PRESENCE_SEEN_TTL_SECS = 30 * 86_400


def presence_online(bucket: int) -> str:
    """Sorted set: users announced online, scored by their last poll time."""
    return f"presence:online:{bucket}"


def presence_seen(user_id: int) -> str:
    """String: unix time of the user's last poll activity."""
    return f"presence:seen:{user_id}"


# ---- push notifications (services/push.py, services/devices.py, workers/pusher.py)


def push_devices_flag(user_id: int) -> str:
    """Set while the user may have push devices (a hint: false positives are
    harmless; a lost flag is restored by the push worker's resync)."""
    return f"pushdev:{user_id}"


# Every key of the push queue shares the {push} hash tag, so its Lua scripts and
# MULTI blocks stay in one slot under Redis Cluster.
PUSH_QUEUE = "{push}:queue"  # list: jobs ready now (LPUSH in, BLMOVE out)
PUSH_DUE = "{push}:due"  # zset: "<user>:<conversation>" batches, scored by due time
PUSH_RETRY = "{push}:retry"  # zset: job JSON waiting for its retry time
PUSH_DEAD = "{push}:dead"  # list: jobs that failed their last attempt (newest first)
PUSH_JOB_IDS = "{push}:job_ids"  # counter naming jobs
PUSH_WORKERS = "{push}:workers"  # set: ids of push workers that may hold jobs
# Set once the device flags were rebuilt from the databases; its absence after a
# Redis restart (data lost) tells a push worker to rebuild them.
PUSH_FLAGS_SYNCED = "{push}:flags_synced"
PUSH_PENDING_PREFIX = "{push}:pending:"
# A batch nobody promoted (its due entry lost) expires instead of piling up.
PUSH_PENDING_TTL_SECS = 24 * 3600
# A push worker refreshes its heartbeat this often; one silent for the TTL is dead,
# and any worker requeues the jobs left in its processing list.
PUSH_HEARTBEAT_SECS = 3
PUSH_HEARTBEAT_TTL_SECS = 15
# Dead letters kept for inspection; older ones are dropped (each was logged).
PUSH_DEAD_MAX = 100_000


# A user's new push batches are counted in windows this long (their share).
PUSH_SHARE_WINDOW_SECS = 60


def push_share(user_id: int) -> str:
    """Counter: push batches scheduled for a user in the current share window."""
    return f"{{push}}:share:{user_id}"


def push_pending(user_id: int, conversation_id: int) -> str:
    """List: messages waiting to be coalesced into one push (JSON, oldest first)."""
    return f"{PUSH_PENDING_PREFIX}{user_id}:{conversation_id}"


def push_processing(worker_id: str) -> str:
    """List: jobs a push worker took and has not finished."""
    return f"{{push}}:processing:{worker_id}"


def push_alive(worker_id: str) -> str:
    """A push worker's heartbeat (expires PUSH_HEARTBEAT_TTL_SECS after the last)."""
    return f"{{push}}:alive:{worker_id}"


def rate_limit(name: str, subject: str, window: int) -> str:
    """Request count of one rate-limit window; it lives two windows.

    The braces make a window and the one before it share a Redis Cluster slot,
    so one script can read both.
    """
    return f"rl:{{{name}:{subject}}}:{window}"


# ---- sessions (services/sessions.py, realtime/revocations.py) ----------------------

# Pub/sub channel: hex SHA-256 digests of revoked tokens, JSON list per message.
# Every worker's token cache drops them on receipt.
SESSIONS_REVOKED_CHANNEL = "sessions:revoked"

# Set: digests of the client addresses a handle logged in from (login throttling:
# services/accounts.py). Remembered this long after the last such login.
LOGIN_KNOWN_ADDRESSES_TTL_SECS = 90 * 86_400


def login_known_addresses(handle_digest: str) -> str:
    return f"login:known:{handle_digest}"


# ---- background work -----------------------------------------------------------


def sweep_lease(database: str) -> str:
    """String: the worker sweeping one database's outboxes (workers/sweeper.py);
    `database` is its host:port/db, never credentials."""
    return f"sweep:lease:{database}"
