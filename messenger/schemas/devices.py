"""Push devices (API.md "Presence, devices, search, operations")."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from messenger.schemas.base import StrictSchema, UtcTime

# Longer URLs are not webhooks anyone types (services/push_providers.py agrees).
DEVICE_URL_MAX = 2048


class DeviceIn(StrictSchema):
    # Checked against the registered push providers by services.devices.
    kind = fields.String(required=True, validate=validate.Length(min=1, max=32))
    url = fields.String(
        required=True, validate=validate.Length(min=1, max=DEVICE_URL_MAX)
    )


class DeviceOut(Schema):
    """A device as GET /v1/devices shows it: never with its secret."""

    id = fields.Integer(attribute="device_id")
    kind = fields.String()
    url = fields.String()
    created_at = UtcTime()


class RegisteredDeviceOut(DeviceOut):
    """The answer to POST /v1/devices: the only time the secret is shown."""

    secret = fields.String()
