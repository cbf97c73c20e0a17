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
    "200 while this host can serve: the directory database and Redis answer. "
    "The body gives every database's status; one shard database down makes it "
    "`degraded`, not 503 (only that database's users get 503s).",
    responses={200: env.ReadyOut, 503: env.ReadyOut},
    descriptions={503: "Cannot serve: `down` names what does not answer."},
    tag=TAG,
    uses_database=False,
)
@public
def readyz() -> Any:
    ready = health.readiness()
    return _readiness_answer(ready, ready.can_serve)


@bp.get("/readyz/strict")
@operation(
    "For monitoring: 200 only while every database and Redis answer.",
    responses={200: env.ReadyOut, 503: env.ReadyOut},
    descriptions={503: "Something is down: `down` names it."},
    tag=TAG,
    uses_database=False,
)
@public
def readyz_strict() -> Any:
    ready = health.readiness()
    return _readiness_answer(ready, ready.all_up)


def _readiness_answer(ready: health.Readiness, is_ready: bool) -> Any:
    body: dict[str, Any] = {
        "status": "ok" if ready.all_up else "degraded" if is_ready else "unavailable",
        "node": ready.node,
        "redis": "up" if ready.redis_up else "down",
        "databases": [
            {
                "database": d.database,
                "status": "up" if d.is_up else "down",
                "directory": d.is_directory,
                "shards": d.shards,
            }
            for d in ready.databases
        ],
        "down": ready.down,
    }
    if is_ready:
        return env.ReadyOut().dump(body)
    body["error"] = {
        "code": "unavailable",
        "message": "Not ready: " + ", ".join(ready.down) + " down.",
    }
    return env.ReadyOut().dump(body), 503, {"Retry-After": "2"}


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
