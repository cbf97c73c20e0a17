"""GET /v1/events: the long poll (thin: hands off to services.events)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, request
from marshmallow import Schema

from messenger import runtime
from messenger.api.auth import authenticated
from messenger.api.operation import operation
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
    return _answer(result)


def _answer(result: events.PollResult) -> Response:
    """The poll's JSON, assembled from pre-encoded parts: events the wake
    delivered arrive as JSON already (the same shape event_json gives)."""
    parts = result.encoded + [
        _dumps(item)
        for item in [event_json(e) for e in result.events] + result.ephemeral
    ]
    # A newline at the end, as Flask's own JSON answers (curl output stays lines).
    body = b'{"events":[%s],"cursor":"%s","more":%s}\n' % (
        b",".join(parts),
        result.cursor.encode(),
        b"true" if result.more else b"false",
    )
    return Response(body, mimetype="application/json")


def _dumps(value: Any) -> bytes:
    # Flask's provider, as a dict answer would be written (compact, keys in order).
    return current_app.json.dumps(value).encode()
