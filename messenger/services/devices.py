"""Push devices: register, list, remove; and the Redis hint that a user has any.

A device lives on its owner's shard. Fan-outs only queue pushes for users whose
`pushdev:<user>` flag is set, so the flag is set before a device is stored (a
flag without a device costs one wasted job, a device without a flag would miss
pushes) and cleared when the last device goes. After Redis loses its data the
push worker rebuilds every flag from the databases (`resync_flags`).
"""

from __future__ import annotations

import logging
import secrets

import redis

from messenger import metrics, runtime
from messenger.errors import NotFound, Unavailable, ValidationFailed
from messenger.models import Device
from messenger.realtime import keys
from messenger.services.push_providers import InvalidTarget, own_endpoints, providers
from messenger.storage import devices as store
from messenger.storage import users as user_store
from messenger.storage.shards import schema_name

logger = logging.getLogger(__name__)

# Each device gets every push of its user: a bound on the fan-out of one message.
MAX_DEVICES_PER_USER = 20
# Flags written per Redis round trip when rebuilding them.
_RESYNC_BATCH = 1000


def register(
    user_id: int, kind: str, target: str, *, request_hosts: list[tuple[str, str]]
) -> Device:
    """Register a push target and return it with its new secret.

    Registering the same kind and target again keeps the device's id and rotates
    its secret.

    Args:
        request_hosts: (Host header, scheme) pairs this request reached us by; a
            target pointing back at them is refused.

    Raises:
        ValidationFailed: unknown kind, refused target, or too many devices.
        Unavailable: Redis or the user's shard did not answer.
    """
    rt = runtime.get()
    provider = providers(rt.settings).get(kind)
    if provider is None:
        kinds = ", ".join(sorted(providers(rt.settings)))
        raise ValidationFailed(
            "The request is not valid.", fields={"kind": [f"Must be one of: {kinds}."]}
        )
    try:
        target = provider.check_target(
            target, own_endpoints=own_endpoints(rt.settings, request_hosts)
        )
    except InvalidTarget as exc:
        raise ValidationFailed(
            "The request is not valid.", fields={"url": [str(exc)]}
        ) from None
    try:
        rt.redis.set(keys.push_devices_flag(user_id), 1)
    except redis.RedisError as exc:
        metrics.REDIS_ERRORS.labels(op="push_flag").inc()
        logger.warning("user %s: device flag not set: %s", user_id, exc)
        raise Unavailable("Redis did not answer; try again.") from None
    with rt.router.directory("allocate_device_id", transaction=False) as cur:
        device_id = user_store.next_id(cur)
    with rt.router.on_user(user_id, "register_device") as cur:
        store.lock_user(cur, user_id)
        device = store.upsert(
            cur, device_id, user_id, kind, target, secrets.token_urlsafe(32)
        )
        if store.count(cur, user_id) > MAX_DEVICES_PER_USER:
            raise ValidationFailed(  # rolls the insert back
                "The request is not valid.",
                fields={
                    "url": [
                        f"At most {MAX_DEVICES_PER_USER} devices per user; "
                        "delete one first."
                    ]
                },
            )
    logger.info("user %s: device %s (%s) registered", user_id, device.device_id, kind)
    return device


def list_devices(user_id: int) -> list[Device]:
    """The user's devices, oldest first."""
    with runtime.get().router.on_user(
        user_id, "list_devices", transaction=False
    ) as cur:
        return store.of_user(cur, user_id)


def remove(user_id: int, device_id: int) -> None:
    """Delete one of the user's devices.

    Raises:
        NotFound: the user has no device with this id (another user's included).
    """
    if not _delete(user_id, device_id):
        raise NotFound("No such device.")


def remove_gone(user_id: int, device_id: int) -> None:
    """Delete a device its provider reported gone (HTTP 404/410); idempotent."""
    if _delete(user_id, device_id):
        logger.info("user %s: device %s removed: gone", user_id, device_id)


def _delete(user_id: int, device_id: int) -> bool:
    rt = runtime.get()
    with rt.router.on_user(user_id, "delete_device") as cur:
        deleted = store.delete(cur, user_id, device_id)
        left = store.count(cur, user_id)
    if deleted and left == 0:
        try:
            rt.redis.delete(keys.push_devices_flag(user_id))
        except redis.RedisError as exc:  # a stale flag only costs a wasted job
            metrics.REDIS_ERRORS.labels(op="push_flag").inc()
            logger.warning("user %s: device flag not cleared: %s", user_id, exc)
    return deleted


def resync_flags() -> int:
    """Set the device flag of every user with a device, on every shard.

    Returns how many users have one.
    """
    rt = runtime.get()
    users: list[int] = []
    for dsn, shards in rt.router.shard_map.shards_by_dsn().items():
        with rt.router.on_dsn(dsn, "push_resync_flags", transaction=False) as cur:
            for shard in shards:
                cur.schema = schema_name(shard)
                users.extend(store.users_with_devices(cur))
    for start in range(0, len(users), _RESYNC_BATCH):
        pipe = rt.redis.pipeline(transaction=False)
        for user_id in users[start : start + _RESYNC_BATCH]:
            pipe.set(keys.push_devices_flag(user_id), 1)
        pipe.execute()
    rt.redis.set(keys.PUSH_FLAGS_SYNCED, 1)
    return len(users)
