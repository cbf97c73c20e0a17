"""/healthz, /readyz (and, as they are added, /metrics and the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from messenger.api.auth import public
from messenger.services import health

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
@public
def healthz() -> Any:
    return {"status": "ok"}


@bp.get("/readyz")
@public
def readyz() -> Any:
    down = health.check_dependencies()
    if down:
        return (
            {
                "status": "unavailable",
                "down": down,
                "error": {
                    "code": "unavailable",
                    "message": "Not ready: " + ", ".join(down) + " down.",
                },
            },
            503,
            {"Retry-After": "2"},
        )
    return {"status": "ok"}
