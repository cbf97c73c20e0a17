"""/healthz, /readyz, /metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app

from messenger import metrics, runtime
from messenger.api import openapi
from messenger.api.auth import bearer_token, public
from messenger.api.operation import operation
from messenger.schemas import envelopes as env
from messenger.services import health, monitoring

bp = Blueprint("ops", __name__)
TAG = "operations"


@bp.get("/healthz")
@operation(
    "200 while the process serves.",
    responses={200: env.HealthOut},
    tag=TAG,
    uses_database=False,
)
@public
def healthz() -> Any:
    return {"status": "ok"}


@bp.get("/readyz")
@operation(
    "200 when every database and Redis answer, else 503 naming what is down.",
    responses={200: env.HealthOut, 503: env.ReadyOut},
    descriptions={503: "Not ready: `down` names what does not answer."},
    tag=TAG,
    uses_database=False,
)
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
@operation(
    "Prometheus metrics of every worker.",
    responses={200: None},
    tag=TAG,
    media_type="text/plain",
    description="A user's bearer token or the operator's MESSENGER_METRICS_TOKEN.",
)
def metrics_text() -> Any:
    monitoring.authorize_scrape(bearer_token())
    monitoring.refresh_gauges()
    metrics_dir = runtime.get().settings.metrics_dir
    body, content_type = metrics.exposition(str(metrics_dir) if metrics_dir else None)
    return Response(body, content_type=content_type)


@bp.get("/v1/openapi.json")
@operation("This document.", responses={200: None}, tag=TAG, uses_database=False)
@public
def openapi_document() -> Any:
    return openapi.document(current_app)
