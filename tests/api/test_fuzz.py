"""Schemathesis against the live app, from its own OpenAPI document.

Every operation gets generated requests, valid and invalid (bounded by
FUZZ_MAX_EXAMPLES so CI stays fast; `make fuzz` runs many more). Every answer
must be documented: no 5xx, a documented status, content type and headers, a body
matching the document's schema, and invalid input refused with a 4xx.

Each failure it found became a regression test in tests/api/test_hardening.py.
"""

import os
import secrets
from collections import Counter
from typing import Any

import pytest
import schemathesis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests import conftest

FUZZ_MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "12"))
REQUESTS: Counter[str] = Counter()
# Operations whose rules go beyond what a schema can say, so a schema-valid
# request may rightly get a 422; positive_data_acceptance is skipped for them.
RULES_BEYOND_THE_SCHEMA = {
    "POST /v1/conversations": "oneself or users that don't exist as peers",
    "POST /v1/conversations/{conversation_id}/members": "a user that doesn't exist",
    "POST /v1/conversations/{conversation_id}/receipts": "a seq beyond the last one",
    "POST /v1/devices": "a URL that isn't http(s) to a public host",
    "GET /v1/events": "a cursor the server never gave (410)",
    "PUT /v1/blocks/{user_id}": "oneself",
    "GET /v1/users": "handle or q, exactly one of them",
    "PATCH /v1/conversations/{conversation_id}/me": "an empty body (one or both)",
    "POST /v1/conversations/{conversation_id}/messages": (
        "a reply_to beyond the last seq, attachments that are not the sender's"
    ),
    "PATCH /v1/conversations/{conversation_id}/messages/{seq}": (
        "an empty body on a message without attachments"
    ),
    "POST /v1/attachments": "an empty body, an image type whose bytes don't decode",
}
# Operations that end sessions: run with a fresh token of a user of their own, so
# they never end the fuzz user's.
ENDS_SESSIONS = {
    "/v1/sessions",
    "/v1/sessions/current",
    "/v1/sessions/{session_id}",
    "/v1/users/me/password",
}


class _BufferedClient(FlaskClient):
    """Reads each answer whole and closes it (schemathesis leaves files open)."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["buffered"] = True
        return super().open(*args, **kwargs)


@pytest.fixture(scope="module")
def fuzz_world(app: Any) -> dict[str, Any]:
    """A user with a direct and a group conversation, so ids in paths can be real."""
    client = app.test_client()

    def user() -> conftest.TestUser:
        handle = "fz" + secrets.token_hex(6)
        client.post("/v1/users", json={"handle": handle, "password": "fuzzing pw"})
        r = client.post(
            "/v1/sessions", json={"handle": handle, "password": "fuzzing pw"}
        )
        body = r.get_json()
        return conftest.TestUser(
            body["user"]["id"], handle, "fuzzing pw", body["token"]
        )

    me, peer, other, ender = user(), user(), user(), user()
    direct = client.post(
        "/v1/conversations",
        headers=me.headers,
        json={"kind": "direct", "user_id": peer.id},
    ).get_json()["conversation"]["id"]
    groups = [
        client.post(
            "/v1/conversations",
            headers=me.headers,
            json={"kind": "group", "title": "fuzz", "member_ids": [peer.id, other.id]},
        ).get_json()["conversation"]["id"]
        for _ in range(3)
    ]
    client.post(
        f"/v1/conversations/{direct}/messages",
        headers=me.headers,
        json={"client_msg_id": "fz1", "body": "hello"},
    )
    return {
        "client": _BufferedClient(app, app.response_class),
        "me": me,
        "user_ids": [me.id, peer.id, other.id],
        "conversation_ids": [direct, *groups],
        "login": lambda: client.post(
            "/v1/sessions", json={"handle": ender.handle, "password": ender.password}
        ).get_json()["token"],
    }


@pytest.fixture(scope="module")
def api_schema(app: Any) -> Any:
    return schemathesis.openapi.from_wsgi("/v1/openapi.json", app)


def _realistic(case: Any, world: dict[str, Any]) -> None:
    """Point half of the generated path ids at real rows, and keep polls short."""
    params = case.path_parameters or {}
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH):
        params = {}  # an invalid id must stay invalid
    for name, pool in (
        ("conversation_id", world["conversation_ids"]),
        ("user_id", world["user_ids"]),
    ):
        value = params.get(name)
        if isinstance(value, int) and value % 2 == 0:
            params[name] = pool[value % len(pool)]
    query = case.query or {}
    query_is_valid = case.meta is None or not case.meta.is_negative_at(
        ParameterLocation.QUERY
    )
    if query_is_valid and "before" in query and "after" in query:
        del query["after"]  # documented: they exclude each other
    if isinstance(query.get("timeout"), int) and query["timeout"] > 0:
        query["timeout"] = 1  # a valid timeout; holding 55 s proves nothing more


def _fuzz_operation(
    operation: Any, mode: GenerationMode, world: dict[str, Any]
) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=True,
    )
    def run(case: Any) -> None:
        _realistic(case, world)
        token = world["me"].token
        if operation.path in ENDS_SESSIONS:
            token = world["login"]()  # they must not end the fuzz user's session
        REQUESTS[f"{mode.value} {operation.label}"] += 1
        headers = {"Authorization": f"Bearer {token}"}
        if case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER):
            headers = {}  # the case tests a missing or broken Authorization header
        excluded = (
            [positive_data_acceptance]
            if operation.label in RULES_BEYOND_THE_SCHEMA
            else []
        )
        case.call_and_validate(
            session=world["client"],
            headers=headers,
            excluded_checks=excluded,
        )

    run()


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_api_conforms_to_its_document(
    api_schema: Any, fuzz_world: dict[str, Any], mode: GenerationMode, capfd: Any
) -> None:
    failures = []
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        try:
            _fuzz_operation(operation, mode, fuzz_world)
        except Unsatisfiable:
            pass  # nothing to make invalid (no parameters, no body)
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure
            failures.append(f"{operation.label}: {exc}")
    sent = sum(n for key, n in REQUESTS.items() if key.startswith(mode.value))
    err = capfd.readouterr().err
    with capfd.disabled():
        print(
            f"\nfuzz {mode.value}: {sent} requests, {operations} operations, "
            f"{len(failures)} failing"
        )
    assert not failures, "\n\n".join(failures)
    assert "Traceback" not in err
