"""GET /: the browser client (static files, no build step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, send_from_directory

from messenger.api.auth import public
from messenger.api.operation import operation

STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"

bp = Blueprint(
    "web", __name__, static_folder=str(STATIC_DIR), static_url_path="/static"
)


@bp.get("/")
@operation(
    "The browser client.",
    responses={200: None},
    uses_database=False,
    media_type="text/html",
)
@public
def index() -> Any:
    response = send_from_directory(STATIC_DIR, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response
