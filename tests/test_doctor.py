"""`messenger doctor` against the test session's databases and Redis."""

import os
import subprocess
import sys
from pathlib import Path

from messenger import doctor
from messenger.embedded import free_port
from messenger.settings import Settings, load
from tests.conftest import TEST_SHARDS, Services

ROOT = Path(__file__).resolve().parent.parent


def _run(settings: Settings) -> tuple[int, list[str]]:
    lines: list[str] = []
    code = doctor.main(settings, lines.append)
    return code, lines


def test_healthy_deployment_passes_every_check(settings: Settings) -> None:
    code, lines = _run(settings)
    assert code == 0, lines
    assert not [line for line in lines if line.startswith("FAIL")]
    names = [line.split(": ")[0].split(None, 1)[1] for line in lines[:-1]]
    for check in ("settings", "redis", "open files"):
        assert any(name.startswith(check) for name in names), names
    for database in ("m1", "m2"):
        for check in ("database", "schema", "clock", "connections"):
            assert any(
                name.startswith(check) and name.endswith(f"/{database}")
                for name in names
            ), (check, database, names)
    assert lines[-1].startswith(f"doctor: {len(lines) - 1} checks, 0 failed")


def test_closed_redis_port_fails_with_what_to_do(services: Services) -> None:
    closed = free_port()
    code, lines = _run(
        load(services.env(MESSENGER_REDIS_URL=f"redis://127.0.0.1:{closed}/0"))
    )
    assert code == 1
    (failed,) = [line for line in lines if line.startswith("FAIL")]
    assert f"redis 127.0.0.1:{closed}/0: cannot connect" in failed
    assert "-> start Redis there, or correct MESSENGER_REDIS_URL" in failed


def test_unmigrated_database_fails_the_schema_check(services: Services) -> None:
    # The cluster's `postgres` database has none of our schemas.
    bare = services.pg.dsn("postgres")
    env = services.env(
        MESSENGER_SHARD_MAP=f"0-{TEST_SHARDS - 1}={bare}",
        # Its own directory: the session's places the shards in m1 and m2.
        MESSENGER_DIRECTORY_URL=bare,
    )
    code, lines = _run(load(env))
    assert code == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert any("/postgres: 9 of 9 schemas lack migrations" in f for f in failed), lines
    assert all("run `messenger migrate`" in f for f in failed), failed


def test_command_exits_non_zero_on_a_closed_database_port(
    services: Services,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
    dsn = f"postgresql://messenger@127.0.0.1:{free_port()}/m1"
    env.update(services.env(MESSENGER_SHARD_MAP="", MESSENGER_DIRECTORY_URL=""))
    env["MESSENGER_DATABASE_URL"] = dsn
    result = subprocess.run(
        [sys.executable, "-m", "messenger", "doctor"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("FAIL  database 127.0.0.1:") and "cannot connect" in line
        for line in lines
    ), lines
    assert any(line.startswith("OK    redis") for line in lines), lines
