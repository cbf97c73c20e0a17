"""The OpenAPI document: served, valid, and covering every route of the app."""

import re
from typing import Any

from messenger.api import openapi


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
    assert not missing, "routes missing from messenger/api/openapi.py: " + ", ".join(
        missing
    )


def test_operations_document_auth_and_error_shapes(client: Any) -> None:
    doc = client.get("/v1/openapi.json").get_json()
    public = {
        ("post", "/v1/users"),
        ("post", "/v1/sessions"),
        ("get", "/healthz"),
        ("get", "/readyz"),
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
                if int(status) >= 400 and (method, path) != ("get", "/readyz"):
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
