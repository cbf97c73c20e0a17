"""The OpenAPI document: served, valid, and covering every route of the app."""

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema, validate

from messenger.api import openapi
from messenger.api.operation import declared_operation
from messenger.errors import ValidationFailed
from messenger.schemas.base import load
from messenger.schemas.presence import USER_IDS_PATTERN, PresenceQuery
from messenger.schemas.search import SearchQuery
from messenger.services import cursors


def test_document_is_served_without_a_token(client: Any) -> None:
    r = client.get("/v1/openapi.json")
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from POST /v1/sessions.",
    }
    assert doc["security"] == [{"bearerAuth": []}]


def test_every_route_is_in_the_document(app: Any, client: Any) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    missing = [
        f"{method} {rule.rule} ({rule.endpoint})"
        for rule, method in openapi.documented_rules(app)
        if method.lower() not in doc["paths"].get(openapi.openapi_path(rule.rule), {})
    ]
    assert not missing, "routes without an @operation: " + ", ".join(missing)


def test_operations_document_auth_and_error_shapes(client: Any) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    public = {
        ("post", "/v1/users"),
        ("post", "/v1/sessions"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/readyz/strict"),
        ("get", "/v1/openapi.json"),
        ("get", "/"),
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            responses = op["responses"]
            if (method, path) in public:
                assert op["security"] == [], (method, path)
            else:
                assert "security" not in op, (method, path)
                assert "401" in responses, (method, path)
            for status, response in responses.items():
                if int(status) >= 400 and path not in ("/readyz", "/readyz/strict"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
                if status in ("429", "503"):
                    assert response["headers"]["Retry-After"]["required"]
            if "{" in path:
                names = {p["name"] for p in ops["parameters"] if p["in"] == "path"}
                assert names == set(re.findall(r"{(\w+)}", path))
    for name in ("send_message", "login", "register", "typing", "create_conversation"):
        op = next(
            o
            for ops in doc["paths"].values()
            for o in ops.values()
            if isinstance(o, dict) and o.get("operationId", "").endswith(f"{name}_post")
        )
        assert "429" in op["responses"], name


def _published(pattern: str) -> str:
    """A validator's regex as the document writes it (\\Z becomes $)."""
    return pattern[:-2] + "$" if pattern.endswith("\\Z") else pattern


def _regexes(schema: Schema) -> dict[str, str]:
    """Field name → the regex its validators enforce."""
    found = {}
    for name, field in schema.fields.items():
        for validator in field.validators:
            if isinstance(validator, validate.Regexp):
                found[field.data_key or name] = validator.regex.pattern
    return found


def _doc_patterns(schema: dict[str, Any]) -> set[str]:
    patterns = {schema.get("pattern")}
    patterns.update(part.get("pattern") for part in schema.get("allOf", []))
    return patterns - {None}


def test_published_patterns_are_the_ones_the_validators_enforce(
    app: Any, client: Any
) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    components = doc["components"]["schemas"]
    checked = set()
    with app.app_context():
        for rule, method in openapi.documented_rules(app):
            op = declared_operation(app.view_functions[rule.endpoint])
            assert op is not None
            documented = doc["paths"][openapi.openapi_path(rule.rule)][method.lower()]
            if op.query is not None:
                query = op.query()
                assert isinstance(query, Schema)
                params = {p["name"]: p["schema"] for p in documented["parameters"]}
                for name, regex in _regexes(query).items():
                    assert _published(regex) in _doc_patterns(params[name]), name
                    checked.add(name)
            if isinstance(op.body, type):
                properties = components[op.body.__name__]["properties"]
                for name, regex in _regexes(op.body()).items():
                    assert _published(regex) in _doc_patterns(properties[name]), name
                    checked.add(name)
    # The cursors, the search words, handles and client message ids at least.
    assert {"before", "after", "q", "handle", "client_msg_id"} <= checked


def test_the_search_cursor_pattern_is_the_codecs(client: Any) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    for path, id_count in (("/v1/search", 2), ("/v1/conversations", 1)):
        params = doc["paths"][path]["get"]["parameters"]
        before = next(p["schema"] for p in params if p["name"] == "before")
        assert before["pattern"] == _published(cursors.pattern(id_count)), path
        assert "maxLength" not in before


@pytest.mark.parametrize("cursor", ["-1.2.3", "+1.2.3", "1_0.2.3", " 1.2.3", "1.2"])
def test_a_search_cursor_outside_the_pattern_is_refused(cursor: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        load(SearchQuery(), {"q": "cake", "before": cursor})
    assert refused.value.fields == {"before": [cursors.INVALID]}


@settings(max_examples=50, deadline=None)
@given(
    at_micros=st.integers(0, 10**17 - 1),
    ids=st.tuples(st.integers(1, 10**18 - 1), st.integers(1, 10**18 - 1)),
)
def test_every_cursor_the_codec_writes_matches_the_pattern(
    at_micros: int, ids: tuple[int, int]
) -> None:
    at = datetime.fromtimestamp(at_micros // 10**6, UTC).replace(
        microsecond=at_micros % 10**6
    )
    cursor = cursors.encode(at, *ids)
    assert re.match(cursors.pattern(2), cursor)
    assert cursors.decode(cursor, 2) == (at, list(ids))


@settings(max_examples=50, deadline=None)
@given(st.from_regex(USER_IDS_PATTERN, fullmatch=True))
def test_presence_ids_matching_the_published_pattern_are_accepted(raw: str) -> None:
    assert load(PresenceQuery(), {"user_ids": raw})["user_ids"]


def test_the_presence_pattern_is_published(client: Any) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    params = doc["paths"]["/v1/presence"]["get"]["parameters"]
    assert params[0]["schema"]["pattern"] == USER_IDS_PATTERN


def test_the_attachment_and_message_action_routes_are_documented(client: Any) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    upload = doc["paths"]["/v1/attachments"]["post"]
    # The raw body, of any type, not JSON.
    assert upload["requestBody"]["content"] == {
        "*/*": {"schema": {"type": "string", "format": "binary"}}
    }
    assert {"201", "413", "422", "429"} <= set(upload["responses"])
    assert upload["parameters"][0]["in"] == "query"
    download = doc["paths"]["/v1/attachments/{attachment_id}"]["get"]
    assert {"200", "206", "304", "404", "416"} <= set(download["responses"])
    thumbnail = doc["paths"]["/v1/attachments/{attachment_id}/thumbnail"]["get"]
    assert "image/webp" in thumbnail["responses"]["200"]["content"]
    message = doc["paths"]["/v1/conversations/{conversation_id}/messages/{seq}"]
    assert {"403", "409", "422"} <= set(message["patch"]["responses"])
    assert {"204", "403", "404"} <= set(message["delete"]["responses"])
    reaction = doc["paths"][
        "/v1/conversations/{conversation_id}/messages/{seq}/reaction"
    ]
    assert {"200", "409", "422"} <= set(reaction["put"]["responses"])
    assert "200" in reaction["delete"]["responses"]
    fields = doc["components"]["schemas"]["Message"]["properties"]
    for name in ("reply_to", "edited_at", "deleted", "reactions", "attachments"):
        assert name in fields
    assert set(doc["components"]["schemas"]["Message"]["required"]) >= {
        "reply_to",
        "attachments",
    }
    attachment = doc["components"]["schemas"]["Attachment"]["properties"]
    assert set(attachment) == {
        "id",
        "content_type",
        "size",
        "filename",
        "sha256",
        "width",
        "height",
        "created_at",
    }
