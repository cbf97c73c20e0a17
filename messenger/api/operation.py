"""@operation: what the OpenAPI document says about a route, written beside it.

    @bp.get("/search")
    @operation(
        "Full-text search over the caller's conversations, newest first.",
        query=SearchQuery,
        responses={200: env.SearchPage},
    )
    @authenticated
    def search() -> Any: ...

The shapes come from the marshmallow schemas named here (their validators give
the document its bounds, enums and patterns); api/openapi.py walks the app's
url map and describes each route from its declaration. A route without one
fails tests/api/test_openapi.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from marshmallow import Schema

F = TypeVar("F", bound=Callable[..., Any])

# A schema class, or a function making a schema or a JSON Schema dict (for
# shapes that depend on the settings, or that no single schema says).
SchemaRef = type[Schema] | Callable[[], Schema | dict[str, Any]]

_ATTRIBUTE = "openapi_operation"


@dataclass(frozen=True)
class Operation:
    """What the document says about one route (each route has one method)."""

    summary: str
    # Status → the schema of its body (None: no body, or not JSON). Error
    # statuses listed here replace the usual Error body with their own.
    responses: Mapping[int, SchemaRef | None]
    query: SchemaRef | None = None
    body: SchemaRef | None = None
    # Default: the blueprint's name.
    tag: str | None = None
    # The route reads or writes a database (so it can answer 503).
    uses_database: bool = True
    rate_limited: bool = False
    # Error statuses beyond the ones that follow from the route's shape.
    errors: tuple[int, ...] = ()
    media_type: str = "application/json"
    description: str = ""
    # Descriptions of statuses that need more than the usual words.
    descriptions: Mapping[int, str] = field(default_factory=dict)
    # The route takes a raw body of any type (an upload): what it is.
    raw_body: str = ""


def operation(
    summary: str,
    *,
    responses: Mapping[int, SchemaRef | None],
    query: SchemaRef | None = None,
    body: SchemaRef | None = None,
    tag: str | None = None,
    uses_database: bool = True,
    rate_limited: bool = False,
    errors: tuple[int, ...] = (),
    media_type: str = "application/json",
    description: str = "",
    descriptions: Mapping[int, str] | None = None,
    raw_body: str = "",
) -> Callable[[F], F]:
    """Declare a route's operation; place it right under the route decorator."""
    declared = Operation(
        summary,
        responses,
        query,
        body,
        tag,
        uses_database,
        rate_limited,
        errors,
        media_type,
        description,
        descriptions or {},
        raw_body,
    )

    def declare(view: F) -> F:
        setattr(view, _ATTRIBUTE, declared)
        return view

    return declare


def declared_operation(view: Callable[..., Any]) -> Operation | None:
    """The operation declared on a view function, if any."""
    found = getattr(view, _ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None
