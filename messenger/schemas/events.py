"""The long poll's query and answer."""

from __future__ import annotations

import functools
from typing import Any

from marshmallow import fields, validate

from messenger.models import Event
from messenger.schemas.base import QuerySchema
from messenger.views import message_json

EVENTS_LIMIT_DEFAULT = 100
EVENTS_LIMIT_MAX = 500


@functools.cache
def events_query(timeout_max_secs: int, timeout_default_secs: int) -> QuerySchema:
    """The query schema for the configured timeouts (built once: every poll uses it,
    and building a marshmallow class costs more than the poll's own work)."""

    class EventsQuery(QuerySchema):
        after = fields.String(
            validate=validate.Regexp(
                r"^[0-9]{1,18}\Z", error="A cursor returned by an earlier poll."
            )
        )
        # Seconds; fractions allowed (a client may poll with timeout=0.5).
        timeout = fields.Float(
            load_default=timeout_default_secs,
            validate=validate.Range(min=0, max=timeout_max_secs),
        )
        limit = fields.Integer(
            load_default=EVENTS_LIMIT_DEFAULT,
            validate=validate.Range(min=1, max=EVENTS_LIMIT_MAX),
        )

    return EventsQuery()


def event_json(event: Event) -> dict[str, Any]:
    """An event as API.md shows it: type, id (stored events only), its fields."""
    out: dict[str, Any] = {"type": event.type}
    if event.event_id is not None:
        out["id"] = event.event_id
    for name, value in event.fields.items():
        out[name] = (
            message_json(value)
            if name == "message" and not isinstance(value, dict)
            else value
        )
    return out
