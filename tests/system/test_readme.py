"""The README's curl walkthrough, run as written against a real server.

The walkthrough registers the handles "alice" and "bob", so it gets a database of
its own (the session's databases are shared by every test, and a second run
would find the handles taken).
"""

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from messenger.cli import cmd_migrate
from messenger.settings import load
from tests.conftest import TEST_SHARDS, Services, require_program
from tests.system.conftest import ROOT, Server, start_gunicorn

WALKTHROUGH = re.compile(
    r"<!-- walkthrough:start -->\s*```sh\n(.*?)```\s*<!-- walkthrough:end -->", re.S
)


def walkthrough_script() -> str:
    readme = (ROOT / "README.md").read_text()
    match = WALKTHROUGH.search(readme)
    assert match, "README.md has no ```sh block between the walkthrough markers"
    return match[1]


@pytest.fixture
def fresh_server(services: Services, tmp_path: Path) -> Iterator[Server]:
    """gunicorn on a new, migrated database of the session's PostgreSQL."""
    database = f"readme_{secrets.token_hex(4)}"
    admin = psycopg2.connect(services.pg.dsn("postgres"))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{database}"')
        dsn = services.pg.dsn(database)
        overrides = {
            "MESSENGER_SHARD_MAP": f"0-{TEST_SHARDS - 1}={dsn}",
            "MESSENGER_DIRECTORY_URL": dsn,
            # A deployment of its own: none of the session's databases.
            "MESSENGER_DATABASES": "",
        }
        cmd_migrate(load(services.env(**overrides)))
        server = start_gunicorn(services, tmp_path, workers=2, **overrides)
        try:
            yield server
        finally:
            server.stop()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    finally:
        admin.close()


def test_readme_walkthrough_runs_against_the_server(
    fresh_server: Server, tmp_path: Path, settings: Any
) -> None:
    require_program("curl", "curl")
    script = "set -euo pipefail\n" + walkthrough_script()
    work = tmp_path / "walkthrough"
    work.mkdir()
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        # python3 (the walkthrough's JSON field reader): this run's, as a user's.
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "BASE": fresh_server.url,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{output}\nstderr:\n{done.stderr}\n"
        f"server:\n{fresh_server.log()}"
    )
    lines = output.splitlines()
    records = [_json(line) for line in lines]
    # Bob's held poll was answered with Alice's message...
    poll_line = next(i for i, r in enumerate(records) if _has(r, "events"))
    polled = [
        (e["message"]["seq"], e["message"]["body"])
        for e in records[poll_line]["events"]
        if e["type"] == "message"
    ]
    assert polled == [(1, "Hi Bob! Lunch?")], output
    # ...then the retry with the same client_msg_id answered 200 (nothing stored).
    assert lines[poll_line + 1] == "200", output
    # History: both messages, in seq order, no duplicate from the retry.
    history = next(r for r in records if _has(r, "messages"))["messages"]
    assert [(m["seq"], m["body"]) for m in history] == [
        (1, "Hi Bob! Lunch?"),
        (2, "Sure, at noon."),
    ], output
    # Alice's conversation list shows Bob's reply as the last message.
    listed = next(r for r in records if _has(r, "conversations"))["conversations"]
    assert [c["last_message"]["body"] for c in listed] == ["Sure, at noon."], output
    # Logging out: 204, then the revoked token gets 401.
    assert lines[-2:] == ["204", "401"], output


def _has(record: Any, key: str) -> bool:
    return isinstance(record, dict) and key in record


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None
