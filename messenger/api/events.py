"""GET /v1/events: the long poll (thin: hands off to services.events)."""

from __future__ import annotations

from collections.abc import Callable
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
        return Response(head_body(events.head(g.user_id)), mimetype="application/json")
    result = events.poll(
        g.user_id,
        int(query["after"]),
        timeout_secs=query["timeout"],
        limit=query["limit"],
        # gunicorn exposes the client's socket: a hang-up then ends the poll.
        sock=request.environ.get("gunicorn.socket"),
    )
    return _answer(result)


# 500 events of 4,000 astral characters are 8 MB of JSON (24 MB escaped), encoded
# on the worker's event loop while its other requests wait. An answer stops
# after the event that takes it past this many bytes (the first event always
# goes), with `more: true`; the client polls again at once.
POLL_ANSWER_MAX_BYTES = 1 << 20


def _answer(result: events.PollResult) -> Response:
    return Response(answer_body(result, _dumps), mimetype="application/json")


def answer_body(result: events.PollResult, dumps: Callable[[Any], bytes]) -> bytes:
    """The poll's JSON, assembled from pre-encoded parts: events the wake
    delivered arrive as JSON already (the same shape event_json gives).

    Args:
        dumps: the app's JSON encoder (Flask's provider), to bytes.
    """
    parts, cursor, more = _bounded(result, dumps)
    parts += [dumps(item) for item in result.ephemeral]
    # A newline at the end, as Flask's own JSON answers (curl output stays lines).
    return b'{"events":[%s],"cursor":"%s","more":%s}\n' % (
        b",".join(parts),
        cursor.encode(),
        b"true" if more else b"false",
    )


def head_body(cursor: str) -> bytes:
    """The answer to a poll without `after`, as the route's dict would be written."""
    return b'{"events":[],"cursor":"%s","more":false}\n' % cursor.encode()


def _bounded(
    result: events.PollResult, dumps: Callable[[Any], bytes]
) -> tuple[list[bytes], str, bool]:
    """The stored events as JSON, cut at POLL_ANSWER_MAX_BYTES, with the cursor
    after the last one kept and whether more are waiting."""
    if result.encoded:
        # Delivered by the wakes: the ids right after the poll's cursor, no gaps.
        first_id = int(result.cursor) - len(result.encoded) + 1
        pairs = [(first_id + i, part) for i, part in enumerate(result.encoded)]
    else:
        pairs = [(e.event_id, dumps(event_json(e))) for e in result.events]
    parts: list[bytes] = []
    size = 0
    for index, (_, part) in enumerate(pairs):
        if size >= POLL_ANSWER_MAX_BYTES:
            return parts, str(pairs[index - 1][0]), True
        parts.append(part)
        size += len(part)
    return parts, result.cursor, result.more


def _dumps(value: Any) -> bytes:
    # Flask's provider, as a dict answer would be written (compact, keys in
    # order, non-ASCII as UTF-8).
    return current_app.json.dumps(value).encode()
