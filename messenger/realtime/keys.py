"""Every Redis key name and TTL, in one place."""

from __future__ import annotations

# A worker refreshes its registrations this often while it holds a user's polls...
CONN_REFRESH_SECS = 20
# ...and a registration lives this long, so a dead worker stops receiving wakes
# about a minute after its last refresh.
CONN_TTL_SECS = 60
# A dead worker's wake list expires this long after the last push to it.
WAKE_LIST_TTL_SECS = 60
# Bound on a wake list, in case its worker is stuck: a dropped wake costs a poll
# at most its timeout (the database stays the truth), never an event.
WAKE_LIST_MAX = 100_000


def wake_list(worker_id: str) -> str:
    """The list a worker's dispatcher BLPOPs."""
    return f"wake:{worker_id}"


def connections(user_id: int) -> str:
    """Sorted set: worker ids holding the user's polls, scored by expiry time."""
    return f"conn:{user_id}"
