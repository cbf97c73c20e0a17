"""The send's transaction: BEGIN/COMMIT ride with its two round trips, failures
roll back, and where its fan-out goes is a pure plan."""

from typing import Any

import gevent
import psycopg2.extensions
import pytest

from messenger.errors import NotFound
from messenger.services import blocks, fanout, messages
from messenger.settings import ShardRange
from messenger.storage.pools import ShardCursor
from messenger.storage.shards import ShardMap, schema_name
from messenger.storage.transaction import pipelined_transaction

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE


@pytest.fixture
def executed(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every statement batch the test's own greenlet sends to PostgreSQL (round
    trips); the app's background greenlets (sweeper, presence) are not counted."""
    sent: list[bytes] = []
    original = ShardCursor.execute
    test_greenlet = gevent.getcurrent()

    def execute(self: ShardCursor, query: Any, vars: Any = None) -> Any:
        if gevent.getcurrent() is test_greenlet:
            sent.append(query if isinstance(query, bytes) else str(query).encode())
        return original(self, query, vars)

    monkeypatch.setattr(ShardCursor, "execute", execute)
    return sent


def test_a_block_folds_begin_and_commit_into_its_statements(
    shards: Any, executed: list[bytes]
) -> None:
    with shards.directory("probe", transaction=False) as cur:
        with pipelined_transaction(cur) as tx:
            assert tx.run("SELECT 1").fetchone() == (1,)
            tx.commit(tx.statement("SELECT %s", (2,)))
        assert cur.connection.get_transaction_status() == IDLE
    assert len(executed) == 2, executed
    assert executed[0].startswith(b"BEGIN;")
    assert executed[1].endswith(b"COMMIT;")


def test_a_failing_block_is_rolled_back(shards: Any) -> None:
    with shards.directory("probe", transaction=False) as cur:
        with pytest.raises(LookupError), pipelined_transaction(cur) as tx:
            tx.run("SELECT 1")
            raise LookupError
        assert cur.connection.get_transaction_status() == IDLE
        with pytest.raises(psycopg2.Error), pipelined_transaction(cur) as tx:
            tx.run("SELECT 1/0")
        assert cur.connection.get_transaction_status() == IDLE


def test_a_block_without_commit_commits_at_its_end(shards: Any) -> None:
    with shards.directory("probe", transaction=False) as cur:
        with pipelined_transaction(cur) as tx:
            tx.run("SELECT 1")
        assert cur.connection.get_transaction_status() == IDLE


def test_a_send_is_two_round_trips(
    make_user: Any,
    chat: Any,
    executed: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Inline or through the outbox: store; then fan out (or queue) and commit."""
    monkeypatch.setattr(fanout, "after_commit", lambda *args: None)
    monkeypatch.setattr(fanout, "start_fan_out", lambda *args: None)
    users = [make_user() for _ in range(4)]
    cid = chat.group(users[0], users[1:])
    # "Who blocked the sender" is read once, then cached by the worker (a
    # broadcast drops it at a block): a send then is two round trips.
    executed.clear()
    messages.send(users[0].id, cid, client_msg_id="rt-0", body="warm up")
    assert len(executed) == 3 and b"blocks" in executed[0]
    executed.clear()
    messages.send(users[0].id, cid, client_msg_id="rt-1", body="count me")
    assert len(executed) == 2
    assert executed[0].startswith(b"BEGIN;")
    assert executed[1].endswith(b"COMMIT;")
    # A retry reads the stored message: no new transaction is left open.
    executed.clear()
    message, created = messages.send(users[0].id, cid, client_msg_id="rt-1", body="x")
    assert not created and message.body == "count me"


def test_a_non_member_send_rolls_back(
    make_user: Any, chat: Any, executed: list[bytes]
) -> None:
    alice, bob, eve = make_user(), make_user(), make_user()
    cid = chat.direct(alice, bob)
    blocks.blockers_of(eve.id)  # cached from here on
    executed.clear()
    with pytest.raises(NotFound):
        messages.send(eve.id, cid, client_msg_id="nope", body="let me in")
    assert len(executed) == 2
    assert executed[0].startswith(b"BEGIN;")
    assert executed[1] == b"ROLLBACK"


# ---- the inline plan (no database) ----------------------------------------------


def _two_databases() -> ShardMap:
    return ShardMap(
        shards=4,
        ranges=(ShardRange(0, 1, "db-a"), ShardRange(2, 3, "db-b")),
        directory_dsn="db-a",
    )


def test_fan_out_goes_inline_when_every_member_shares_the_database() -> None:
    plan = fanout.plan_inline(_two_databases(), 100, [9, 4, 1, 8])
    assert plan is not None
    # Schemas sorted, users in id order: one global lock order.
    assert plan.by_schema == (
        (schema_name(0), (4, 8)),
        (schema_name(1), (1, 9)),
    )


def test_fan_out_goes_through_the_outbox_when_a_member_is_elsewhere() -> None:
    assert fanout.plan_inline(_two_databases(), 100, [1, 2]) is None
    assert fanout.plan_inline(_two_databases(), 102, [2, 3, 6]) is not None
