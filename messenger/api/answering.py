"""What every answer gets, through Flask (app.py's hooks) or not (the thin poll
path, api/poll_path.py): its request id, the security and cache headers, the
request metrics and the access log line."""

from __future__ import annotations

import logging
import re
import secrets
from typing import Any

from messenger import metrics

logger = logging.getLogger("messenger.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Old proxies cache GETs they shouldn't; no API answer is reusable.
API_CACHE_HEADER = ("Cache-Control", "no-store")


def request_id_of(incoming: str) -> str:
    """The request id: the client's X-Request-ID when well formed, else a new one."""
    return incoming if _REQUEST_ID.match(incoming) else secrets.token_hex(8)


def answer_headers(request_id: str) -> list[tuple[str, str]]:
    """The headers _after gives every JSON answer under /v1/ (the thin poll
    path, api/poll_path.py, adds them without Flask)."""
    return [
        ("X-Request-ID", request_id),
        *SECURITY_HEADERS.items(),
        API_CACHE_HEADER,
    ]


def record_request(
    route: str,
    method: str,
    status: int,
    duration_secs: float,
    user_id: int | None,
    ip: str | None,
    request_id: str | None = None,
) -> None:
    """Count and log one answered request (the access log line).

    Args:
        request_id: given when no Flask request is active (the thin poll path);
            else the log filter takes it from the request.
    """
    metrics.count_request(route, metrics.method_label(method), status, duration_secs)
    extra: dict[str, Any] = {
        "user_id": user_id,
        "route": route,
        "method": method,
        "status": status,
        "duration_ms": round(duration_secs * 1000, 2),
        "ip": ip,
    }
    if request_id is not None:
        extra["request_id"] = request_id
    logger.info("%s %s %s", method, route, status, extra=extra)
