"""Assembling the Flask app: `create_app(settings)`; no logic of its own."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request
from flask.sessions import SessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from messenger import bootstrap, logs
from messenger.api import answering, cors, limits, poll_path, register_blueprints
from messenger.errors import install_error_handlers
from messenger.settings import Settings, load

# API.md: request bodies are at most 64 KiB.
MAX_BODY_BYTES = 64 * 1024

_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    # blob: for attachments, fetched with the bearer token and shown as blob URLs.
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app and this process's runtime (pools, Redis, hub, hooks).

    Starts nothing: the caller starts the background work (bootstrap.start).
    """
    settings = settings or load()
    logs.setup(settings.log_level, settings.log_json)
    rt = bootstrap.build(settings)

    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["SECRET_KEY"] = settings.secret_key
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.compact = True  # type: ignore[attr-defined]
    # UTF-8 as it is: escaping non-ASCII triples the bytes of most scripts (an
    # astral character is 12 bytes as two \u escapes, 4 as itself). Lone
    # surrogates, which can't be written as UTF-8, never get in (schemas.base).
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    # Bearer tokens, never cookies: skip Flask's signed-cookie session per request.
    app.session_interface = _NoSessions()
    # GET /v1/events skips Flask (api/poll_path.py); inside ProxyFix, which then
    # gives it the client's address too.
    app.wsgi_app = poll_path.ThinPoll(app, app.wsgi_app)  # type: ignore[method-assign]
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=settings.trusted_proxies,
            x_proto=settings.trusted_proxies,
            x_host=settings.trusted_proxies,
        )
    install_error_handlers(app)
    register_blueprints(app)
    app.before_request(_before)
    limits.install(app)  # after _before: its errors still get a request id
    app.after_request(_after)
    cors.install(app)
    app.extensions["messenger"] = rt
    return app


class _NoSessions(SessionInterface):
    def open_session(self, app: Flask, request: Any) -> None:
        return None  # Flask then hands out its (cheap) null session

    def save_session(self, app: Flask, session: Any, response: Response) -> None:
        return None


def _before() -> None:
    g.started = time.monotonic()
    g.request_id = answering.request_id_of(request.headers.get("X-Request-ID", ""))


def _after(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "-")
    for name, value in answering.SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/v1/"):
        response.headers.setdefault(*answering.API_CACHE_HEADER)
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = _PAGE_CSP
    route = request.url_rule.rule if request.url_rule else "unmatched"
    answering.record_request(
        route,
        request.method,
        response.status_code,
        time.monotonic() - g.get("started", time.monotonic()),
        g.get("user_id"),
        # The client address (behind nginx: from X-Forwarded-For, see ProxyFix).
        request.remote_addr,
    )
    return response
