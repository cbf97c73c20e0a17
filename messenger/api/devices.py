"""/v1/devices: push targets for when the user has no live poll."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from messenger.api import limits
from messenger.api.auth import authenticated
from messenger.api.common import path_id, request_json
from messenger.api.operation import operation
from messenger.schemas import envelopes as env
from messenger.schemas.base import load
from messenger.schemas.devices import DeviceIn, DeviceOut, RegisteredDeviceOut
from messenger.services import devices
from messenger.services import push as _push  # noqa: F401 - registers the fan-out hook

bp = Blueprint("devices", __name__, url_prefix="/v1")


@bp.post("/devices")
@operation(
    "Register a webhook for pushes while offline; the secret is shown once.",
    body=DeviceIn,
    responses={201: env.DeviceEnvelope},
    tag="users",
    rate_limited=True,
)
@authenticated
def register_device() -> Any:
    limits.per_user("device")
    data = load(DeviceIn(), request_json())
    device = devices.register(
        g.user_id,
        data["kind"],
        data["url"],
        request_hosts=[(request.host, request.scheme)],
    )
    return {"device": RegisteredDeviceOut().dump(device)}, 201


@bp.get("/devices")
@operation(
    "The caller's devices (without secrets).",
    responses={200: env.DeviceList},
    tag="users",
)
@authenticated
def list_devices() -> Any:
    found = devices.list_devices(g.user_id)
    return {"devices": DeviceOut(many=True).dump(found)}


@bp.delete("/devices/<int:device_id>")
@operation("Remove one of the caller's devices.", responses={204: None}, tag="users")
@authenticated
def delete_device(device_id: int) -> Any:
    devices.remove(g.user_id, path_id(device_id))
    return "", 204
