"""The long poll's query and answer."""

from __future__ import annotations

import functools
import re
from typing import Any

from marshmallow import fields, validate

from messenger.models import Event
from messenger.schemas.base import QuerySchema
from messenger.views import message_json

EVENTS_LIMIT_DEFAULT = 100
EVENTS_LIMIT_MAX = 500


# A cursor: the id of an event (a PostgreSQL bigint fits in 18 digits).
CURSOR_PATTERN = r"^[0-9]{1,18}\Z"
# The plain form of the three parameters, as clients send them: digits (and a
# decimal point in timeout), nothing to percent-decode.
_PLAIN_VALUE = {
    "after": re.compile(CURSOR_PATTERN),
    "timeout": re.compile(r"^[0-9]{1,4}(\.[0-9]{1,9})?\Z"),
    "limit": re.compile(r"^[0-9]{1,4}\Z"),
}


def plain_events_query(
    query_string: str, timeout_max_secs: int, timeout_default_secs: int
) -> dict[str, Any] | None:
    """The poll's query as events_query would load it, without marshmallow, when
    it is in the plain form every client sends (each parameter at most once, digits
    only, within its range, no other parameter); None otherwise, and then the
    schema decides (and words any error)."""
    query: dict[str, Any] = {}
    for part in query_string.split("&"):
        if not part:
            continue
        name, sep, value = part.partition("=")
        pattern = _PLAIN_VALUE.get(name)
        if not sep or pattern is None or name in query or not pattern.match(value):
            return None
        query[name] = value
    if "timeout" in query:
        query["timeout"] = float(query["timeout"])
        if not 0 <= query["timeout"] <= timeout_max_secs:
            return None
    else:
        query["timeout"] = timeout_default_secs
    if "limit" in query:
        query["limit"] = int(query["limit"])
        if not 1 <= query["limit"] <= EVENTS_LIMIT_MAX:
            return None
    else:
        query["limit"] = EVENTS_LIMIT_DEFAULT
    return query


@functools.cache
def events_query(timeout_max_secs: int, timeout_default_secs: int) -> QuerySchema:
    """The query schema for the configured timeouts (built once: every poll uses it,
    and building a marshmallow class costs more than the poll's own work)."""

    class EventsQuery(QuerySchema):
        after = fields.String(
            validate=validate.Regexp(
                CURSOR_PATTERN, error="A cursor returned by an earlier poll."
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
