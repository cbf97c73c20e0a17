"""The ApiError family and the one JSON error shape of API.md.

Services raise these (they carry no Flask objects); the handler installed by
`install_error_handlers` renders every error, expected or not, as
`{"error": {"code", "message", "fields"?}}`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client can act on: it has a status and a code from API.md."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        fields: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = dict(fields) if fields else None
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields is not None:
            error["fields"] = self.fields
        return {"error": error}


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str = "A valid bearer token is required.") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class Conflict(ApiError):
    status, code = 409, "conflict"


class CursorExpired(ApiError):
    status, code = 410, "cursor_expired"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class RangeNotSatisfiable(ApiError):
    status, code = 416, "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(
            "The range is past the end of the file.",
            headers={"Content-Range": f"bytes */{size}"},
        )


class ValidationFailed(ApiError):
    status, code = 422, "validation_failed"


class RateLimited(ApiError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class Unavailable(ApiError):
    """A database or Redis this request needs is down."""

    status, code = 503, "unavailable"

    def __init__(self, message: str, retry_after: int = 2) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


_HTTP_ERRORS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    429: RateLimited,
}

_HTTP_MESSAGES = {
    400: "The request could not be understood.",
    404: "No such resource.",
    405: "This method is not allowed on this resource.",
    413: "The request body is larger than 64 KiB.",
}


def render(error: ApiError) -> Any:
    response = jsonify(error.body())
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def _from_http(exc: HTTPException) -> ApiError:
    status = exc.code or 500
    cls = _HTTP_ERRORS.get(status)
    message = _HTTP_MESSAGES.get(status, exc.description or "Request failed.")
    if cls is Unauthorized:
        return Unauthorized()
    if cls is RateLimited:
        return RateLimited("Too many requests.", 1)
    if cls is None:
        err = ApiError(message)
        err.status, err.code = status, "bad_request" if status < 500 else "internal"
        return err
    return cls(message)


def install_error_handlers(app: Flask) -> None:
    """Render every error as JSON; unexpected ones become a logged 500."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        return render(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        err = _from_http(exc)
        response = render(err)
        if err.status == 405 and exc.get_response().headers.get("Allow"):
            response.headers["Allow"] = exc.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        return render(unexpected(g.get("request_id", "-")))


def unexpected(request_id: str) -> ApiError:
    """Log the exception being handled; the 500 to answer instead."""
    logger.exception("request %s: unexpected error", request_id)
    err = ApiError("The server failed to answer this request; it was logged.")
    err.status, err.code = 500, "internal"
    return err
