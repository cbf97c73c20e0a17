"""The OpenAPI 3.1 document of the API, built from the app's routes and schemas.

`build(app)` walks `app.url_map` and describes each route with the @operation
declared beside it (api/operation.py): summary, body, query and response
schemas (marshmallow, through apispec, so bounds, enums and patterns come from
the validators that enforce them), success statuses. The error answers follow
from what a route is: authenticated routes can answer 401, routes with a body
400/413/422, routes with ids in the path 404, routes on the databases 503,
rate-limited ones 429.

A route without an @operation is left out of the document, and
tests/api/test_openapi.py fails.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema
from werkzeug.routing import Rule

from messenger.api.auth import PUBLIC_ENDPOINTS
from messenger.api.operation import Operation, SchemaRef, declared_operation
from messenger.schemas import envelopes as env
from messenger.schemas.base import BIGINT_MAX, UtcTime
from messenger.schemas.conversations import ConversationOut, MemberOut
from messenger.schemas.devices import DeviceOut, RegisteredDeviceOut
from messenger.schemas.messages import AttachmentOut, MessageOut
from messenger.schemas.presence import IdList
from messenger.schemas.users import UserOut

API_TITLE = "messenger"
API_VERSION = "1"
OPENAPI_VERSION = "3.1.0"

# Statuses of error answers and when they happen.
_ERROR_TEXT = {
    400: "Malformed JSON or a wrong content type.",
    401: "No valid bearer token.",
    403: "The caller may not do this.",
    404: "No such resource, or a conversation the caller is not a member of.",
    409: "Conflict (a handle that is taken, a member already there).",
    410: "The cursor is older than the retained events: resync from history.",
    413: "The body is larger than 64 KiB.",
    416: "The range is past the end of the file; `Content-Range: bytes */<size>`.",
    422: "The request is not valid; `fields` says why.",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "A database or Redis this request needs is down; retry after "
    "`Retry-After` seconds.",
}
_SUCCESS_TEXT = {
    200: "OK.",
    201: "Created.",
    204: "Done; no body.",
    206: "Part of the file (`Content-Range`).",
    304: "Not modified: the caller's copy (`If-None-Match`) is current.",
}

# Component names of the schemas the document shares (nested ones first).
_COMPONENTS: dict[str, type[Schema]] = {
    "User": UserOut,
    "Member": MemberOut,
    "Attachment": AttachmentOut,
    "Message": MessageOut,
    "Conversation": ConversationOut,
    "Event": env.EventOut,
    "ErrorBody": env.ErrorBody,
    "Error": env.ErrorOut,
    "Presence": env.PresenceOut,
    "Device": DeviceOut,
    "RegisteredDevice": RegisteredDeviceOut,
}
_PATH_PARAM = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_INT_PATH = {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX}


def openapi_path(rule: str) -> str:
    """/v1/users/<int:user_id> → /v1/users/{user_id}."""
    return _PATH_PARAM.sub(lambda m: "{" + m["name"] + "}", rule)


def documented_rules(app: Flask) -> list[tuple[Rule, str]]:
    """Every (rule, method) the document must describe: all but static files."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule, method))
    return found


def _schema(ref: SchemaRef) -> Schema | dict[str, Any]:
    return ref()


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERROR_TEXT[status],
        "content": {"application/json": {"schema": "Error"}},
    }
    if status in (429, 503):
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string"}}
        }
    return response


def _response(status: int, op: Operation) -> dict[str, Any]:
    """A success answer, or an error answer in the Error shape unless the
    operation gives its own body for that status."""
    response: dict[str, Any] = (
        _error_response(status)
        if status >= 400
        else {"description": _SUCCESS_TEXT[status]}
    )
    if status in op.descriptions:
        response["description"] = op.descriptions[status]
    ref = op.responses.get(status)
    if ref is not None:
        response["content"] = {op.media_type: {"schema": _schema(ref)}}
    elif status < 400 and status not in (204, 304):
        plain = "object" if op.media_type == "application/json" else "string"
        response["content"] = {op.media_type: {"schema": {"type": plain}}}
    return response


def _operation(rule: Rule, method: str, op: Operation) -> dict[str, Any]:
    is_public = rule.endpoint.split(".")[-1] in PUBLIC_ENDPOINTS
    has_path_ids = "<" in rule.rule
    out: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_") + "_" + method.lower(),
        "summary": op.summary,
        "tags": [op.tag or rule.endpoint.split(".")[0]],
        "responses": {},
    }
    if op.description:
        out["description"] = op.description
    if is_public:
        out["security"] = []
    if op.query is not None:
        out["parameters"] = [{"in": "query", "schema": _schema(op.query)}]
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _schema(op.body)}},
        }
    if op.raw_body:
        out["requestBody"] = {
            "required": True,
            "description": op.raw_body,
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        }
    errors = set(op.errors)
    if not is_public:
        errors.add(401)
    if op.body is not None:
        errors.update((400, 413, 422))
    if op.raw_body:
        errors.update((413, 422))
    if op.query is not None:
        errors.add(422)
    if has_path_ids:
        errors.add(404)
    if op.uses_database:
        errors.add(503)
    if op.rate_limited:
        errors.add(429)
    for status in sorted(errors | set(op.responses)):
        out["responses"][str(status)] = _response(status, op)
    return out


def build(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of every documented route of `app`."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=API_TITLE,
        version=API_VERSION,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "A long-polling HTTP messenger. Errors always have the "
            "shape of the Error schema."
        },
    )
    plugin.map_to_openapi_type(UtcTime, "string", "date-time")
    plugin.map_to_openapi_type(IdList, "string", None)
    spec.components.security_scheme(
        "bearerAuth",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from POST /v1/sessions.",
        },
    )
    for name, schema in _COMPONENTS.items():
        spec.components.schema(name, schema=schema)
    by_path: dict[str, dict[str, Any]] = {}
    path_params: dict[str, list[dict[str, Any]]] = {}
    for rule, method in documented_rules(app):
        op = declared_operation(app.view_functions[rule.endpoint])
        if op is None:
            continue
        path = openapi_path(rule.rule)
        by_path.setdefault(path, {})[method.lower()] = _operation(rule, method, op)
        path_params[path] = [
            {
                "in": "path",
                "name": m["name"],
                "required": True,
                "schema": dict(_INT_PATH)
                if m["converter"] == "int"
                else {"type": "string"},
            }
            for m in _PATH_PARAM.finditer(rule.rule)
        ]
    for path in sorted(by_path):
        spec.path(path=path, operations=by_path[path], parameters=path_params[path])
    doc = spec.to_dict()
    doc["security"] = [{"bearerAuth": []}]
    _finish(doc)
    return doc


def _finish(doc: dict[str, Any]) -> None:
    """What apispec can't say from the schemas alone: Python's \\Z in JSON
    Schema's terms, the NUL rule of schemas.base.load, and that answers (unlike
    bodies) may gain fields."""
    for schema in _walk_schemas(doc):
        # Python's end anchor \Z is JSON Schema's $ (patterns never match newlines).
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and pattern.endswith("\\Z"):
            schema["pattern"] = pattern[:-2] + "$"
    # Answers may gain fields (API.md changes only by adding); bodies may not.
    request_schemas = _request_schema_ids(doc)
    # Request strings never hold NUL (schemas.base.load refuses it: PostgreSQL
    # text can't store it).
    for schema in _walk_schemas(doc):
        if id(schema) in request_schemas and schema.get("type") == "string":
            pattern = schema.get("pattern")
            if pattern and not (pattern.startswith("^") and pattern.endswith("$")):
                # A "contains" pattern (search words): keep it beside the other.
                schema.setdefault("allOf", []).append({"pattern": pattern})
                pattern = None
            if not pattern:
                schema["pattern"] = _NO_NUL
    for schema in _walk_schemas(doc):
        if id(schema) not in request_schemas:
            schema.pop("additionalProperties", None)


_NO_NUL = "^[^\\x00]*$"


def _walk_schemas(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "type" in node or "properties" in node or "pattern" in node:
            found.append(node)
        for value in node.values():
            found.extend(_walk_schemas(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_walk_schemas(value))
    return found


def _request_schema_ids(doc: dict[str, Any]) -> set[int]:
    """Ids of every schema object a request uses (bodies, query parameters),
    following $refs into the components."""
    components = doc["components"]["schemas"]
    ids: set[int] = set()
    seen_refs: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref not in seen_refs:
                seen_refs.add(ref)
                visit(components[ref.rsplit("/", 1)[-1]])
            ids.add(id(node))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    for ops in doc["paths"].values():
        for op in ops.values():
            if not isinstance(op, dict):
                continue
            for param in op.get("parameters", []):
                if param.get("in") == "query":
                    visit(param["schema"])
            body = op.get("requestBody", {}).get("content", {})
            if "application/json" in body:
                visit(body["application/json"]["schema"])
    return ids


def document(app: Flask) -> dict[str, Any]:
    """The document of `app`, built once (its routes don't change at run time)."""
    if "openapi" not in app.extensions:
        app.extensions["openapi"] = build(app)
    return copy.deepcopy(app.extensions["openapi"])
