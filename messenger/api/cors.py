"""CORS: which other web origins may call the API from a browser.

Nothing is allowed unless MESSENGER_CORS_ORIGINS lists the origin (or `*`). The API
authenticates with a bearer header, never a cookie, so no credentials mode is
offered (no Access-Control-Allow-Credentials). The allowed origins are read from
the runtime's settings on every request, so a test can swap them.
"""

from __future__ import annotations

from flask import Flask, Response, request

from messenger import runtime

ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE"
# Range and If-None-Match: partial and conditional downloads of attachments.
ALLOWED_HEADERS = "Authorization, Content-Type, X-Request-ID, Range, If-None-Match"
# Headers a browser script may read besides the CORS-safelisted ones: when to retry
# (429, 503), the id to quote in a bug report, and a download's part, version and
# name.
EXPOSED_HEADERS = "Retry-After, X-Request-ID, Content-Range, ETag, Content-Disposition"
# How long a browser may reuse a preflight answer: short, so that removing an origin
# takes effect within minutes (Chromium caps it at 2 h anyway).
PREFLIGHT_MAX_AGE_SECS = 600


def allowed_origin() -> str | None:
    """The request's Origin when it is allowed, else None."""
    return _allowed(request.headers.get("Origin", ""))


def _allowed(origin: str) -> str | None:
    allowed = runtime.get().settings.cors_origins
    if not origin or not allowed:
        return None
    if "*" in allowed or origin.rstrip("/") in allowed:
        return origin
    return None


def answer_headers(origin: str) -> list[tuple[str, str]]:
    """What _add_headers adds to an answer to a GET with this Origin header (""
    when none): for the thin poll path (api/poll_path.py), which has no Flask
    response to add them to."""
    if not runtime.get().settings.cors_origins:
        return []
    headers = [("Vary", "Origin")]
    allowed = _allowed(origin)
    if allowed is not None:
        headers.append(("Access-Control-Allow-Origin", allowed))
        headers.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
    return headers


def _preflight() -> Response | None:
    """Answer an allowed origin's preflight (OPTIONS + Access-Control-Request-Method).

    Runs before routing errors are raised, so a preflight is never a 405. Any other
    OPTIONS (no Origin, a disallowed origin) gets Flask's default answer, without CORS
    headers.
    """
    if request.method != "OPTIONS":
        return None
    if not request.headers.get("Access-Control-Request-Method"):
        return None
    origin = allowed_origin()
    if origin is None:
        return None
    response = Response(status=204)
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_SECS)
    return response


def _add_headers(response: Response) -> Response:
    if not runtime.get().settings.cors_origins:
        return response
    # The answer depends on Origin whenever CORS is configured: caches must not hand
    # one origin's answer (with or without the header) to another.
    response.vary.add("Origin")
    origin = allowed_origin()
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        if request.method != "OPTIONS":
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
    return response


def install(app: Flask) -> None:
    """Answer preflights and mark allowed origins' answers, errors included.

    Install after the app's own before/after hooks: the request id is then set
    before a preflight is answered, and the headers are added to every response.
    """
    app.before_request(_preflight)
    app.after_request(_add_headers)
