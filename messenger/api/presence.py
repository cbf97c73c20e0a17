"""GET /v1/presence."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from messenger.api.auth import authenticated
from messenger.api.operation import operation
from messenger.schemas import envelopes as env
from messenger.schemas.base import load
from messenger.schemas.presence import PresenceQuery, presence_json
from messenger.services import presence as presence_service

bp = Blueprint("presence", __name__, url_prefix="/v1")


@bp.get("/presence")
@operation(
    "Online status of users sharing a conversation with the caller.",
    query=PresenceQuery,
    responses={200: env.PresenceMap},
    tag="events",
)
@authenticated
def presence() -> Any:
    query = load(PresenceQuery(), request.args)
    found = presence_service.lookup(g.user_id, query["user_ids"])
    return {"presence": presence_json(found)}
