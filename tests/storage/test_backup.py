"""`messenger backup` under load, `messenger restore` into a fresh PostgreSQL.

The source is the test session's deployment (8 shards on two databases, the
directory on the first). The backup runs while a greenlet keeps sending messages
through the app; the restore goes into a second PostgreSQL with another physical
layout (three databases, the directory on its own), and everything acknowledged
before the backup started must be read back from it.
"""

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import psycopg2
import pytest

from messenger.embedded import EmbeddedPostgres, free_port
from messenger.settings import Settings, load
from messenger.storage import backup
from messenger.storage.shards import schema_name
from tests.conftest import TEST_SHARDS, Services

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# A steady load: one message every SEND_INTERVAL_SECS, bounded in count.
SEND_INTERVAL_SECS = 0.01
MAX_SENDS = 3000


@pytest.fixture(scope="module")
def target_pg() -> Iterator[EmbeddedPostgres]:
    root = Path(tempfile.mkdtemp(prefix="messenger-restore-", dir="/var/tmp"))
    root.chmod(0o755)
    pg = EmbeddedPostgres(root / "pg", free_port(), databases=("r1", "r2", "r3"))
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(pg.fallback_home, ignore_errors=True)


def _target_settings(services: Services, pg: EmbeddedPostgres) -> Settings:
    return load(
        services.env(
            MESSENGER_SHARD_MAP=(
                f"0-5={pg.dsn('r1')};6-{TEST_SHARDS - 1}={pg.dsn('r2')}"
            ),
            MESSENGER_DIRECTORY_URL=pg.dsn("r3"),
            # Another deployment: it knows none of the session's databases.
            MESSENGER_DATABASES="",
        )
    )


def _query(settings: Settings, entity_id: int, statement: str, *params: Any) -> list:
    """Rows of a statement on the shard of entity_id ({s}: its schema)."""
    shard = entity_id % settings.shards
    dsn = next(
        r.dsn for r in settings.resolved_shard_map() if r.first <= shard <= r.last
    )
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(statement.format(s=schema_name(shard)), params)
        rows = cur.fetchall()
    conn.close()
    return rows


def test_backup_under_load_restores_every_acknowledged_message(
    client: Any,
    make_user: Any,
    chat: Any,
    services: Services,
    settings: Settings,
    target_pg: EmbeddedPostgres,
    tmp_path: Path,
) -> None:
    users = [make_user("bk") for _ in range(4)]
    group_id = chat.group(users[0], users[1:])
    direct_id = chat.direct(users[1], users[2])
    conversations = {group_id: users, direct_id: users[1:3]}
    acked: list[tuple[int, int, str, float]] = []
    running = True

    def send_loop() -> None:
        for n in range(MAX_SENDS):
            if not running:
                return
            conversation_id = (group_id, direct_id)[n % 2]
            members = conversations[conversation_id]
            client_msg_id = secrets.token_hex(8)
            r = client.post(
                f"/v1/conversations/{conversation_id}/messages",
                headers=members[n % len(members)].headers,
                json={"client_msg_id": client_msg_id, "body": f"m{n}"},
            )
            assert r.status_code == 201, r.get_json()
            seq = r.get_json()["message"]["seq"]
            acked.append((conversation_id, seq, client_msg_id, time.monotonic()))
            gevent.sleep(SEND_INTERVAL_SECS)

    sender = gevent.spawn(send_loop)
    archive = tmp_path / "messenger.backup"
    lines: list[str] = []
    try:
        gevent.sleep(1)
        backup_started = time.monotonic()
        sent_before = len(acked)
        made = backup.backup(settings, archive, lines.append)
        sent_during = len(acked) - sent_before
    finally:
        running = False
        sender.join(timeout=30)
    assert sender.successful(), sender.exception
    assert sent_before >= 20 and sent_during >= 1, (sent_before, sent_during)
    assert any(line.startswith("backup: database 2/2") for line in lines), lines
    assert made.rows["messages"] >= sent_before

    target = _target_settings(services, target_pg)
    restored = backup.restore(target, archive, lines.append)
    print("\n".join(lines))
    # Users whose event counter is missing get one at restore: in this session,
    # tests/system/test_outages.py registers users on a database outside the
    # shard map of these settings.
    assert restored.rows["user_state"] >= made.rows["user_state"]
    restored.rows["user_state"] = made.rows["user_state"]
    assert restored.rows == made.rows
    # Direct pairs are shard rows (the shard of the lower user id), restored
    # there; the directory has none.
    assert made.rows["direct_pairs"] >= 1
    assert "directory.direct_pairs" not in made.rows
    lo, hi = sorted((users[1].id, users[2].id))
    assert _query(
        target,
        lo,
        "SELECT conversation_id FROM {s}.direct_pairs WHERE user_lo = %s "
        "AND user_hi = %s",
        lo,
        hi,
    ) == [(direct_id,)]

    # Everything acknowledged before the backup started is back, as it was.
    before = [a for a in acked if a[3] < backup_started]
    for conversation_id in conversations:
        stored = dict(
            _query(
                target,
                conversation_id,
                "SELECT seq, client_msg_id FROM {s}.messages "
                "WHERE conversation_id = %s ORDER BY seq",
                conversation_id,
            )
        )
        expected = {seq: cid for conv, seq, cid, _ in before if conv == conversation_id}
        assert expected.items() <= stored.items()
        # Internally consistent: seqs gapless, the conversation's counter agrees.
        assert sorted(stored) == list(range(1, len(stored) + 1))
        (last_seq,) = _query(
            target,
            conversation_id,
            "SELECT last_seq FROM {s}.conversations WHERE conversation_id = %s",
            conversation_id,
        )[0]
        assert last_seq == len(stored)
        # Every member has each message in its mailbox, or an outbox row owes it
        # to them (the sweeper replays it): nothing is lost between databases.
        owed = _query(
            target,
            conversation_id,
            "SELECT seq, recipients FROM {s}.outbox WHERE conversation_id = %s "
            "AND kind = 'message'",
            conversation_id,
        )
        for member in conversations[conversation_id]:
            have = {
                seq
                for (seq,) in _query(
                    target,
                    member.id,
                    "SELECT seq FROM {s}.mailbox WHERE user_id = %s "
                    "AND conversation_id = %s",
                    member.id,
                    conversation_id,
                )
            }
            have |= {seq for seq, recipients in owed if member.id in recipients}
            assert have >= set(stored), sorted(set(stored) - have)[:10]


def test_restore_refuses_a_deployment_holding_data(
    make_user: Any, settings: Settings, tmp_path: Path
) -> None:
    make_user("bk")  # the session's deployment holds at least this user
    archive = tmp_path / "messenger.backup"
    backup.backup(settings, archive, lambda line: None)
    with pytest.raises(backup.BackupError, match="already holds data") as caught:
        backup.restore(settings, archive, lambda line: None)
    assert str(caught.value).endswith("restore only into an empty deployment.")


def test_restore_rejects_a_file_that_is_not_a_backup(
    settings: Settings, tmp_path: Path
) -> None:
    bogus = tmp_path / "not-a-backup.tar"
    bogus.write_bytes(b"hello")
    with pytest.raises(backup.BackupError, match="is not a messenger backup"):
        backup.restore(settings, bogus, lambda line: None)


def test_database_password_goes_to_the_environment_not_the_command_line() -> None:
    arg, env = backup.dbname_argument(
        "postgresql://app:p%40ss@db.example:5433/messenger?sslmode=require"
    )
    assert arg == "--dbname=postgresql://app@db.example:5433/messenger?sslmode=require"
    assert env["PGPASSWORD"] == "p@ss"


def test_commands_back_up_and_refuse_to_restore_over_data(
    make_user: Any, services: Services, settings: Settings, tmp_path: Path
) -> None:
    make_user("bk")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSENGER_")}
    env.update(services.env())
    archive = tmp_path / "cli.backup"

    def messenger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "messenger", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    made = messenger("backup", str(archive))
    assert made.returncode == 0, made.stdout + made.stderr
    assert "backup: database 2/2" in made.stdout
    assert "directory.users" in made.stdout
    assert backup.read_manifest(archive)["shards"] == TEST_SHARDS
    refused = messenger("restore", str(archive))
    assert refused.returncode == 1
    assert refused.stderr.startswith("messenger: restore refused: The target")
    assert refused.stderr.strip().endswith("restore only into an empty deployment.")


def test_backup_into_a_missing_folder_says_so(
    settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(backup.BackupError, match="does not exist"):
        backup.backup(settings, tmp_path / "nowhere" / "x.backup", lambda line: None)
