"""Push devices (API.md "Presence, devices, search, operations")."""

from __future__ import annotations

from marshmallow import fields, validate

from messenger.schemas.base import CompleteOut, StrictSchema, UtcTime
from messenger.services.push_providers import PROVIDER_FACTORIES

# Longer URLs are not webhooks anyone types (services/push_providers.py agrees).
DEVICE_URL_MAX = 2048


class DeviceIn(StrictSchema):
    # The registered push providers (services.devices checks it again).
    kind = fields.String(
        required=True, validate=validate.OneOf(sorted(PROVIDER_FACTORIES))
    )
    url = fields.String(
        required=True, validate=validate.Length(min=1, max=DEVICE_URL_MAX)
    )


class DeviceOut(CompleteOut):
    """A device as GET /v1/devices shows it: never with its secret."""

    id = fields.Integer(attribute="device_id")
    kind = fields.String()
    url = fields.String()
    created_at = UtcTime()


class RegisteredDeviceOut(DeviceOut):
    """The answer to POST /v1/devices: the only time the secret is shown."""

    secret = fields.String()
