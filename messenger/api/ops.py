"""/healthz, /readyz, /metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app

from messenger import metrics, runtime
from messenger.api import openapi
from messenger.api.auth import bearer_token, public
from messenger.services import health, monitoring

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


@bp.get("/metrics")
def metrics_text() -> Any:
    monitoring.authorize_scrape(bearer_token())
    monitoring.refresh_gauges()
    metrics_dir = runtime.get().settings.metrics_dir
    body, content_type = metrics.exposition(str(metrics_dir) if metrics_dir else None)
    return Response(body, content_type=content_type)


@bp.get("/v1/openapi.json")
@public
def openapi_document() -> Any:
    return openapi.document(current_app)
