"""GET /v1/events: the long poll (thin: hands off to services.events)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, g, request
from marshmallow import Schema

from messenger import runtime
from messenger.api.auth import authenticated
from messenger.api.operation import operation
from messenger.models import Message
from messenger.schemas import envelopes as env
from messenger.schemas.base import load
from messenger.schemas.events import event_json, events_query
from messenger.services import events

bp = Blueprint("events", __name__, url_prefix="/v1")


def _query() -> Schema:
    """The query schema for the configured poll timeouts."""
    settings = runtime.get().settings
    return events_query(
        settings.poll_timeout_max_secs, settings.poll_timeout_default_secs
    )


@bp.get("/events")
@operation(
    "The long poll: the caller's events after a cursor.",
    query=_query,
    responses={200: env.EventsPage},
    errors=(410,),
    description=(
        "Without `after`: the head cursor at once. With `after`: events after "
        "it, or held until one arrives or `timeout` seconds pass."
    ),
)
@authenticated
def poll() -> Any:
    query = load(_query(), request.args)
    if "after" not in query:
        return {"events": [], "cursor": events.head(g.user_id), "more": False}
    result = events.poll(
        g.user_id,
        int(query["after"]),
        timeout_secs=query["timeout"],
        limit=query["limit"],
        # gunicorn exposes the client's socket: a hang-up then ends the poll.
        sock=request.environ.get("gunicorn.socket"),
    )
    rendered, cursor, more = _bounded(result)
    return {"events": rendered + result.ephemeral, "cursor": cursor, "more": more}


# 500 events of 4,000 astral characters are 8 MB of JSON (24 MB escaped), encoded
# on the worker's event loop while its other requests wait. An answer stops
# after the event that takes it past this many bytes (the first event always
# goes), with `more: true`; the client polls again at once.
POLL_ANSWER_MAX_BYTES = 1 << 20
# What a message event weighs besides its body (ids, times, field names).
_MESSAGE_EVENT_OVERHEAD_BYTES = 256


def _bounded(result: events.PollResult) -> tuple[list[dict[str, Any]], str, bool]:
    """The poll's events as JSON, cut at POLL_ANSWER_MAX_BYTES, with the cursor
    after the last one kept and whether more are waiting."""
    rendered: list[dict[str, Any]] = []
    size = 0
    for event in result.events:
        if size >= POLL_ANSWER_MAX_BYTES:
            return rendered, str(result.events[len(rendered) - 1].event_id), True
        as_json = event_json(event)
        message = event.fields.get("message")
        if isinstance(message, Message):
            size += len(message.body.encode()) + _MESSAGE_EVENT_OVERHEAD_BYTES
        else:
            size += len(json.dumps(as_json, ensure_ascii=False, default=str).encode())
        rendered.append(as_json)
    return rendered, result.cursor, result.more
