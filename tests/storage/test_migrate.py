"""`messenger migrate` on a deployment of the previous release: the direct pairs
the directory held move to the shards, and nothing about them is lost."""

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from messenger.settings import Settings
from messenger.storage import conversations as store
from messenger.storage.migrate import MigrateRefused, migrate
from messenger.storage.router import Router
from tests.conftest import TEST_SHARDS

# The directory's table of the releases before 0080 (sql/directory/0001_init.sql).
OLD_DIRECTORY_PAIRS = """
CREATE TABLE directory.direct_pairs (
    user_lo         bigint NOT NULL,
    user_hi         bigint NOT NULL,
    conversation_id bigint NOT NULL,
    PRIMARY KEY (user_lo, user_hi),
    CHECK (user_lo < user_hi)
)
"""
MOVE_TO_SHARDS = "0080_direct_pairs_to_shards.sql"


@pytest.fixture
def router(settings: Settings, app: Any) -> Iterator[Router]:
    """A router of its own, as `messenger migrate` builds one; the directory's
    table is gone again afterwards, whatever the test did."""
    router = Router.from_settings(settings)
    yield router
    with router.directory("test_old_pairs", transaction=False) as cur:
        cur.execute("SELECT to_regclass('directory.direct_pairs')")
        left = cur.fetchone()[0] is not None
    if left:
        with router.directory("test_old_pairs") as cur:
            cur.execute("DELETE FROM directory.shard_moves WHERE shard = 3")
        migrate(router)
    router.close()


def as_previous_release(router: Router, pairs: list[tuple[int, int, int]]) -> None:
    """The directory as the previous release left it: its table holding `pairs`,
    the migration that moves them not applied."""
    with router.directory("test_old_pairs") as cur:
        cur.execute(OLD_DIRECTORY_PAIRS)
        cur.executemany("INSERT INTO directory.direct_pairs VALUES (%s, %s, %s)", pairs)
        cur.execute(
            "DELETE FROM directory.schema_migrations WHERE name = %s",
            (MOVE_TO_SHARDS,),
        )


def pair_on_shard(router: Router, lo: int, hi: int) -> int | None:
    with router.on_user(lo, "test_pair", transaction=False) as cur:
        return store.find_direct_pair(cur, lo, hi)


def test_migrate_copies_the_directory_pairs_to_their_shards(
    client: Any, make_user: Any, chat: Any, router: Router
) -> None:
    alice, bob = make_user(), make_user()
    conversation_id = chat.direct(alice, bob)
    lo, hi = sorted((alice.id, bob.id))
    # The previous release kept this pair in the directory only.
    with router.on_user(lo, "test_forget") as cur:
        cur.run("DELETE FROM {s}.direct_pairs WHERE user_lo = %s", (lo,))
    # Pairs of no user, one per shard, and one the shard has already.
    base = 9_200_000_000_000 + secrets.randbelow(10**6) * 100
    synthetic = [(base + n, base + n + 50, base + n + 70) for n in range(TEST_SHARDS)]
    with router.on_user(synthetic[0][0], "test_present") as cur:
        assert store.claim_direct_pair(cur, *synthetic[0])
    as_previous_release(router, [(lo, hi, conversation_id), *synthetic])
    try:
        result = migrate(router)
        assert result.applied == 1
        assert result.copied_rows == 1 + TEST_SHARDS - 1
        for pair_lo, pair_hi, pair_conversation in synthetic:
            assert pair_on_shard(router, pair_lo, pair_hi) == pair_conversation
        assert {router.shard_of(p[0]) for p in synthetic} == set(range(TEST_SHARDS))
        with router.directory("test_gone", transaction=False) as cur:
            cur.execute("SELECT to_regclass('directory.direct_pairs')")
            assert cur.fetchone()[0] is None
        # Opening the pair again finds its conversation: no second one.
        assert pair_on_shard(router, lo, hi) == conversation_id
        r = client.post(
            "/v1/conversations",
            headers=bob.headers,
            json={"kind": "direct", "user_id": alice.id},
        )
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["conversation"]["id"] == conversation_id
        assert migrate(router).applied == 0
    finally:
        for pair_lo, _, _ in synthetic:
            with router.on_user(pair_lo, "test_clean") as cur:
                cur.run("DELETE FROM {s}.direct_pairs WHERE user_lo = %s", (pair_lo,))


def test_migrate_refuses_to_copy_pairs_while_a_shard_moves(router: Router) -> None:
    as_previous_release(router, [])
    with router.directory("test_move") as cur:
        cur.execute(
            "INSERT INTO directory.shard_moves (shard, source, target, step) "
            "VALUES (3, 'm1', 'm3', 'preflight')"
        )
    try:
        with pytest.raises(MigrateRefused, match="Shard 3 is being moved"):
            migrate(router)
    finally:
        with router.directory("test_move") as cur:
            cur.execute("DELETE FROM directory.shard_moves WHERE shard = 3")
    assert migrate(router).applied == 1
