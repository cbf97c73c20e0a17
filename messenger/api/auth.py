"""Bearer-token checks. Every route declares itself `public` or `authenticated`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request

from messenger.errors import Unauthorized
from messenger.services import sessions

F = TypeVar("F", bound=Callable[..., Any])

# Routes that need no token, by endpoint name (the OpenAPI document and the
# authorization matrix test read this).
PUBLIC_ENDPOINTS: set[str] = set()


def bearer_token() -> str:
    return parse_bearer(request.headers.get("Authorization", ""))


def parse_bearer(header: str) -> str:
    """The token of an Authorization header; Unauthorized unless a bearer one."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    return token.strip()


def authenticated(view: F) -> F:
    """Require a valid bearer token; sets g.user_id, g.session_id and g.token.

    A token this worker verified recently costs no I/O (services/sessions.py)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = bearer_token()
        verified = sessions.verify(token)
        g.user_id = verified.user_id
        g.session_id = verified.session_id
        g.token = token
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def public(view: F) -> F:
    PUBLIC_ENDPOINTS.add(view.__name__)
    return view
