"""Push devices, on the owner's shard (sql/shard/0003_devices.sql)."""

from __future__ import annotations

from typing import Any

from messenger.models import Device
from messenger.storage.pools import ShardCursor

_COLUMNS = "device_id, user_id, kind, url, secret, created_at"

# Registering a target again keeps its id and rotates its secret.
_UPSERT = f"""
INSERT INTO {{s}}.devices (device_id, user_id, kind, url, secret)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (user_id, kind, url) DO UPDATE SET secret = EXCLUDED.secret
RETURNING {_COLUMNS}
"""

_COUNT = "SELECT count(*) FROM {s}.devices WHERE user_id = %s"

# Registrations of one user take turns (until their transaction ends), so each
# counts the others' devices: the cap holds under concurrent registrations.
# The two-key form keeps this lock apart from the one-key conversation locks.
_LOCK_USER_DEVICES = "SELECT pg_advisory_xact_lock(3, hashtext(%s::text))"

_OF_USER = f"SELECT {_COLUMNS} FROM {{s}}.devices WHERE user_id = %s ORDER BY device_id"

_DELETE = "DELETE FROM {s}.devices WHERE device_id = %s AND user_id = %s"

_USERS_WITH_DEVICES = "SELECT DISTINCT user_id FROM {s}.devices"


def _device(row: Any) -> Device:
    return Device(row[0], row[1], row[2], row[3], row[4], row[5])


def upsert(
    cur: ShardCursor, device_id: int, user_id: int, kind: str, url: str, secret: str
) -> Device:
    """Insert a device, or give an existing (user, kind, url) the new secret."""
    return _device(cur.run(_UPSERT, (device_id, user_id, kind, url, secret)).fetchone())


def lock_user(cur: ShardCursor, user_id: int) -> None:
    """Serialise device changes of one user until the transaction ends."""
    cur.run(_LOCK_USER_DEVICES, (user_id,))


def count(cur: ShardCursor, user_id: int) -> int:
    row: Any = cur.run(_COUNT, (user_id,)).fetchone()
    return int(row[0])


def of_user(cur: ShardCursor, user_id: int) -> list[Device]:
    return [_device(row) for row in cur.run(_OF_USER, (user_id,)).fetchall()]


def delete(cur: ShardCursor, user_id: int, device_id: int) -> bool:
    """Delete one of the user's devices; False if the user has no such device."""
    cur.run(_DELETE, (device_id, user_id))
    return cur.rowcount > 0


def users_with_devices(cur: ShardCursor) -> list[int]:
    """Every user of this cursor's shard with at least one device."""
    return [int(row[0]) for row in cur.run(_USERS_WITH_DEVICES).fetchall()]
