"""The OpenAPI 3.1 document of the API, built from the app's routes and schemas.

`build(app)` walks `app.url_map` and describes each (endpoint, method) with its
entry in OPERATIONS: summary, body, query and response schemas (marshmallow,
through apispec), success statuses. The error answers follow from what a route
is: authenticated routes can answer 401, routes with a body 400/413/422, routes
with ids in the path 404, routes on the databases 503, rate-limited ones 429.

A route without an entry here is left out of the document, and
tests/test_openapi.py fails: add the entry with the route.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema
from werkzeug.routing import Rule

from messenger import runtime
from messenger.api.auth import PUBLIC_ENDPOINTS
from messenger.schemas import envelopes as env
from messenger.schemas.base import UtcTime
from messenger.schemas.conversations import (
    AddMemberIn,
    ConversationOut,
    ListQuery,
    MemberOut,
    UpdateConversationIn,
)
from messenger.schemas.devices import DeviceIn, DeviceOut, RegisteredDeviceOut
from messenger.schemas.events import events_query
from messenger.schemas.messages import (
    HistoryQuery,
    MessageOut,
    ReceiptIn,
    SendMessageIn,
)
from messenger.schemas.presence import PRESENCE_MAX_IDS, IdList, PresenceQuery
from messenger.schemas.search import SearchQuery
from messenger.schemas.users import HandleQuery, LoginIn, RegisterIn, UserOut
from messenger.services import push_providers

API_TITLE = "messenger"
API_VERSION = "1"
OPENAPI_VERSION = "3.1.0"

# A schema class, or a function making a schema or a JSON Schema dict.
SchemaRef = type[Schema] | Callable[[], Schema | dict[str, Any]]


@dataclass(frozen=True)
class Operation:
    """What the document says about one method of one route."""

    summary: str
    tag: str
    statuses: tuple[int, ...] = (200,)
    response: SchemaRef | None = None
    body: SchemaRef | None = None
    query: SchemaRef | None = None
    # The route reads or writes a database (so it can answer 503).
    uses_database: bool = True
    rate_limited: bool = False
    # Errors beyond the ones that follow from the route's shape.
    errors: tuple[int, ...] = ()
    media_type: str = "application/json"
    description: str = ""


def _events_query() -> Schema:
    settings = runtime.get().settings
    return events_query(
        settings.poll_timeout_max_secs, settings.poll_timeout_default_secs
    )


_USERS, _CONV, _MSG, _EVT, _OPS = (
    "users",
    "conversations",
    "messages",
    "events",
    "operations",
)

# (endpoint, method) → its description. Keep in the order of API.md.
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("users.register", "POST"): Operation(
        "Create an account.",
        _USERS,
        (201,),
        env.UserEnvelope,
        body=RegisterIn,
        rate_limited=True,
        errors=(409,),
    ),
    ("users.login", "POST"): Operation(
        "Log in: a bearer token for the other routes.",
        _USERS,
        (201,),
        env.SessionOut,
        body=LoginIn,
        rate_limited=True,
        errors=(401,),
        description="A wrong handle and a wrong password get the same 401.",
    ),
    ("users.logout", "DELETE"): Operation(
        "Revoke the token of this request at once.", _USERS, (204,)
    ),
    ("users.me", "GET"): Operation(
        "The caller's account.", _USERS, response=env.UserEnvelope
    ),
    ("users.get_user", "GET"): Operation(
        "A user by id.", _USERS, response=env.UserEnvelope
    ),
    ("users.find_user", "GET"): Operation(
        "A user by handle.",
        _USERS,
        response=env.UserEnvelope,
        query=HandleQuery,
        errors=(404,),
    ),
    ("conversations.create_conversation", "POST"): Operation(
        "Start a direct conversation (200 when it exists already) or a group.",
        _CONV,
        (200, 201),
        env.ConversationEnvelope,
        body=lambda: {
            "oneOf": [env.DirectConversationIn, env.GroupConversationIn],
        },
        rate_limited=True,
        errors=(404,),
    ),
    ("conversations.list_conversations", "GET"): Operation(
        "The caller's conversations, most recent activity first.",
        _CONV,
        response=env.ConversationPage,
        query=ListQuery,
    ),
    ("conversations.get_conversation", "GET"): Operation(
        "One conversation with its members.", _CONV, response=env.ConversationEnvelope
    ),
    ("conversations.update_conversation", "PATCH"): Operation(
        "Rename a group.",
        _CONV,
        response=env.ConversationEnvelope,
        body=UpdateConversationIn,
        errors=(403,),
    ),
    ("conversations.delete_conversation", "DELETE"): Operation(
        "Delete a group (its owner only).", _CONV, (204,), errors=(403,)
    ),
    ("conversations.add_member", "POST"): Operation(
        "Add a member to a group (any member).",
        _CONV,
        (201,),
        env.ConversationEnvelope,
        body=AddMemberIn,
        errors=(403, 409),
    ),
    ("conversations.remove_member", "DELETE"): Operation(
        "Leave a group, or remove a member (owner only).",
        _CONV,
        (204,),
        errors=(403,),
    ),
    ("messages.send_message", "POST"): Operation(
        "Send a message; a retry with the same client_msg_id answers 200.",
        _MSG,
        (200, 201),
        env.MessageEnvelope,
        body=SendMessageIn,
        rate_limited=True,
    ),
    ("messages.history", "GET"): Operation(
        "A page of a conversation's messages, ascending seq.",
        _MSG,
        response=env.MessagePage,
        query=HistoryQuery,
        description="`before` and `after` exclude each other (422 with both).",
    ),
    ("messages.post_receipt", "POST"): Operation(
        "Move the caller's delivered or read position forward.",
        _MSG,
        (204,),
        body=ReceiptIn,
    ),
    ("messages.typing", "POST"): Operation(
        "Tell the other members the caller is typing (ephemeral).",
        _MSG,
        (204,),
        rate_limited=True,
    ),
    ("events.poll", "GET"): Operation(
        "The long poll: the caller's events after a cursor.",
        _EVT,
        response=env.EventsPage,
        query=_events_query,
        errors=(410,),
        description=(
            "Without `after`: the head cursor at once. With `after`: events after "
            "it, or held until one arrives or `timeout` seconds pass."
        ),
    ),
    ("presence.presence", "GET"): Operation(
        "Online status of users sharing a conversation with the caller.",
        _EVT,
        response=env.PresenceMap,
        query=PresenceQuery,
    ),
    ("devices.register_device", "POST"): Operation(
        "Register a webhook for pushes while offline; the secret is shown once.",
        _USERS,
        (201,),
        env.DeviceEnvelope,
        body=DeviceIn,
    ),
    ("devices.list_devices", "GET"): Operation(
        "The caller's devices (without secrets).", _USERS, response=env.DeviceList
    ),
    ("devices.delete_device", "DELETE"): Operation(
        "Remove one of the caller's devices.", _USERS, (204,)
    ),
    ("search.search", "GET"): Operation(
        "Full-text search over the caller's conversations, newest first.",
        _MSG,
        response=env.SearchPage,
        query=SearchQuery,
    ),
    ("ops.healthz", "GET"): Operation(
        "200 while the process serves.",
        _OPS,
        response=env.HealthOut,
        uses_database=False,
    ),
    ("ops.readyz", "GET"): Operation(
        "200 when every database and Redis answer, else 503 naming what is down.",
        _OPS,
        response=env.HealthOut,
        uses_database=False,
        errors=(503,),
    ),
    ("ops.metrics_text", "GET"): Operation(
        "Prometheus metrics of every worker.",
        _OPS,
        media_type="text/plain",
        description=(
            "A user's bearer token or the operator's MESSENGER_METRICS_TOKEN."
        ),
    ),
    ("ops.openapi_document", "GET"): Operation(
        "This document.", _OPS, uses_database=False
    ),
    ("web.index", "GET"): Operation(
        "The browser client.", "web", uses_database=False, media_type="text/html"
    ),
}

# Statuses of error answers and when they happen.
_ERROR_TEXT = {
    400: "Malformed JSON or a wrong content type.",
    401: "No valid bearer token.",
    403: "The caller may not do this.",
    404: "No such resource, or a conversation the caller is not a member of.",
    409: "Conflict (a handle that is taken, a member already there).",
    410: "The cursor is older than the retained events: resync from history.",
    413: "The body is larger than 64 KiB.",
    422: "The request is not valid; `fields` says why.",
    429: "Too many requests; retry after `Retry-After` seconds.",
    503: "A database or Redis this request needs is down; retry after "
    "`Retry-After` seconds.",
}
_SUCCESS_TEXT = {200: "OK.", 201: "Created.", 204: "Done; no body."}

# Component names of the schemas the document shares (nested ones first).
_COMPONENTS: dict[str, type[Schema]] = {
    "User": UserOut,
    "Member": MemberOut,
    "Message": MessageOut,
    "Conversation": ConversationOut,
    "Event": env.EventOut,
    "ErrorBody": env.ErrorBody,
    "Error": env.ErrorOut,
    "Presence": env.PresenceOut,
    "Device": DeviceOut,
    "RegisteredDevice": RegisteredDeviceOut,
}
# Answers: every documented field is always present (a null where allowed).
_ALWAYS_COMPLETE = ("User", "Member", "Message", "Conversation", "Device")
_PATH_PARAM = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_INT_PATH = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}


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


def _operation(rule: Rule, method: str, op: Operation) -> dict[str, Any]:
    is_public = rule.endpoint.split(".")[-1] in PUBLIC_ENDPOINTS
    has_path_ids = "<" in rule.rule
    out: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_") + "_" + method.lower(),
        "summary": op.summary,
        "tags": [op.tag],
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
    for status in op.statuses:
        response: dict[str, Any] = {"description": _SUCCESS_TEXT[status]}
        if status != 204:
            if op.response is not None:
                response["content"] = {op.media_type: {"schema": _schema(op.response)}}
            else:
                response["content"] = {op.media_type: {"schema": {"type": "string"}}}
                if op.media_type == "application/json":
                    response["content"] = {
                        op.media_type: {"schema": {"type": "object"}}
                    }
        out["responses"][str(status)] = response
    errors = set(op.errors)
    if not is_public:
        errors.add(401)
    if op.body is not None:
        errors.update((400, 413, 422))
    if op.query is not None:
        errors.add(422)
    if has_path_ids:
        errors.add(404)
    if op.uses_database:
        errors.add(503)
    if op.rate_limited:
        errors.add(429)
    for status in sorted(errors):
        out["responses"][str(status)] = _error_response(status)
    if (rule.endpoint, method) == ("ops.readyz", "GET"):
        out["responses"]["503"] = {
            "description": "Not ready: `down` names what does not answer.",
            "headers": _error_response(503)["headers"],
            "content": {"application/json": {"schema": env.ReadyOut()}},
        }
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
        op = OPERATIONS.get((rule.endpoint, method))
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
    """Adjust what apispec can't infer from the schemas."""
    schemas = doc["components"]["schemas"]
    for name in _ALWAYS_COMPLETE:
        schemas[name]["required"] = sorted(schemas[name]["properties"])
    schemas["RegisteredDevice"]["required"] = sorted(
        schemas["RegisteredDevice"]["properties"]
    )
    schemas["Conversation"]["properties"]["kind"]["enum"] = ["direct", "group"]
    schemas["Member"]["properties"]["role"]["enum"] = ["owner", "member"]
    schemas["DeviceIn"]["properties"]["kind"]["enum"] = sorted(
        push_providers.providers(runtime.get().settings)
    )
    # A fields.Method: apispec can't know it dumps a Message or null.
    schemas["Conversation"]["properties"]["last_message"] = {
        "anyOf": [{"$ref": "#/components/schemas/Message"}, {"type": "null"}]
    }
    # Shapes the services check by hand, so the query schemas can't tell apispec.
    _set_pattern(
        doc,
        "/v1/presence",
        "user_ids",
        f"^[1-9][0-9]{{0,17}}(,[1-9][0-9]{{0,17}}){{0,{PRESENCE_MAX_IDS - 1}}}$",
    )
    # schemas.search: a non-space character somewhere; the class spelled out so
    # that Python, ECMA and Rust regexes agree on what space is.
    _set_pattern(doc, "/v1/search", "q", r"[^\s\x1c-\x1f\x85\ufeff]", keep_length=True)
    # services.search cursors: "<microseconds>.<conversation id>.<seq>".
    _set_pattern(
        doc, "/v1/search", "before", r"^[0-9]{1,17}\.[0-9]{1,18}\.[0-9]{1,18}$"
    )
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


def _set_pattern(
    doc: dict[str, Any], path: str, name: str, pattern: str, keep_length: bool = False
) -> None:
    for param in doc["paths"].get(path, {}).get("get", {}).get("parameters", []):
        if param["name"] == name:
            if not keep_length:
                param["schema"].pop("minLength", None)
                param["schema"].pop("maxLength", None)
            param["schema"]["pattern"] = pattern


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
            if "requestBody" in op:
                visit(op["requestBody"]["content"]["application/json"]["schema"])
    return ids


def document(app: Flask) -> dict[str, Any]:
    """The document of `app`, built once (its routes don't change at run time)."""
    if "openapi" not in app.extensions:
        app.extensions["openapi"] = build(app)
    return copy.deepcopy(app.extensions["openapi"])
