"""GET /v1/search."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from messenger.api import limits
from messenger.api.auth import authenticated
from messenger.api.operation import operation
from messenger.schemas import envelopes as env
from messenger.schemas.base import load
from messenger.schemas.search import SearchQuery
from messenger.services import search as search_service
from messenger.views import message_json

bp = Blueprint("search", __name__, url_prefix="/v1")


@bp.get("/search")
@operation(
    "Full-text search over the caller's conversations, newest first.",
    query=SearchQuery,
    responses={200: env.SearchPage},
    rate_limited=True,
    tag="messages",
)
@authenticated
def search() -> Any:
    limits.per_user("search")
    query = load(SearchQuery(), request.args)
    found, next_cursor = search_service.search(
        g.user_id, query["q"], limit=query["limit"], before=query.get("before")
    )
    return {"messages": [message_json(m) for m in found], "next": next_cursor}
