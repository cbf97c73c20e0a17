"""GET /v1/events without Flask: the thin path of the long poll.

A fan-out to N members is N poll answers and N re-polls on one worker, so the
cost of one poll request is the cost of delivery. Through Flask, a poll paid
for a request and an app context, URL matching, three before- and two
after-request hooks, a marshmallow load of its three parameters and a
Response object (profile in issue 13's notes): more than the poll itself.

This WSGI layer, in front of the Flask app, serves exactly `GET /v1/events`
and hands every other request to Flask unchanged. It does what the route and
the hooks do, by the same functions: the request id, the bearer token check
(sessions.verify, the token cache), the socket bound of api/limits.py, the
query (schemas/events.py: the plain form directly, anything else through the
route's marshmallow schema, with its words for every error), services.events,
the answer's bytes (api/events.py), the headers of app._after and of CORS, the
error shape of errors.py, the metrics and the access log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from flask import Flask, Response
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Request

from messenger import runtime
from messenger.api import answering, cors, limits
from messenger.api import events as events_api
from messenger.api.auth import parse_bearer
from messenger.errors import ApiError, unexpected
from messenger.logs import current_request_id
from messenger.schemas.base import load
from messenger.schemas.events import events_query, plain_events_query
from messenger.services import events, sessions

PATH = "/v1/events"
# The route's name in metrics and the access log, as Flask's url rule names it.
ROUTE = "/v1/events"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ThinPoll:
    """WSGI middleware: GET /v1/events here, everything else to `wsgi_app`."""

    def __init__(self, flask_app: Flask, wsgi_app: WsgiApp) -> None:
        self.flask_app = flask_app
        self.wsgi_app = wsgi_app

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "GET":
            return self.wsgi_app(environ, start_response)
        return self.serve(environ, start_response)

    def serve(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        started = time.monotonic()
        request_id = answering.request_id_of(environ.get("HTTP_X_REQUEST_ID", ""))
        reset = current_request_id.set(request_id)
        user_id: int | None = None
        try:
            try:
                user_id = self._authenticate(environ)
                status, body, extra = 200, self._answer(environ, user_id), {}
            except ApiError as exc:
                status, body, extra = exc.status, self._dumps(exc.body()), exc.headers
            except Exception:
                err = unexpected(request_id)
                status, body, extra = err.status, self._dumps(err.body()), {}
            headers = [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                *extra.items(),
                *answering.answer_headers(request_id),
                *cors.answer_headers(environ.get("HTTP_ORIGIN", "")),
            ]
            start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", headers)
            answering.record_request(
                ROUTE,
                "GET",
                status,
                time.monotonic() - started,
                user_id,
                environ.get("REMOTE_ADDR"),
                request_id,
            )
            return [body]
        finally:
            current_request_id.reset(reset)

    def _authenticate(self, environ: dict[str, Any]) -> int:
        """The caller's user id, as the route's hooks and @authenticated find it."""
        limits.bound_socket(environ.get("gunicorn.socket"))
        token = parse_bearer(environ.get("HTTP_AUTHORIZATION", ""))
        return sessions.verify(token).user_id

    def _answer(self, environ: dict[str, Any], user_id: int) -> bytes:
        """The body of a 200 answer, as api/events.py's route gives it."""
        settings = runtime.get().settings
        query = plain_events_query(
            environ.get("QUERY_STRING", ""),
            settings.poll_timeout_max_secs,
            settings.poll_timeout_default_secs,
        )
        if query is None:
            schema = events_query(
                settings.poll_timeout_max_secs, settings.poll_timeout_default_secs
            )
            query = load(schema, Request(environ).args)
        if "after" not in query:
            return events_api.head_body(events.head(user_id))
        result = events.poll(
            user_id,
            int(query["after"]),
            timeout_secs=query["timeout"],
            limit=query["limit"],
            # gunicorn exposes the client's socket: a hang-up then ends the poll.
            sock=environ.get("gunicorn.socket"),
        )
        return events_api.answer_body(result, self._dumps_part)

    def _dumps_part(self, value: Any) -> bytes:
        return self.flask_app.json.dumps(value).encode()

    def _dumps(self, value: Any) -> bytes:
        # As jsonify writes it (errors only: the cost of a Response is no matter).
        response = cast(Response, self.flask_app.json.response(value))
        return response.get_data()
