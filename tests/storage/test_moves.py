"""The shard map in the directory and moving a shard online.

Topology: the session's PostgreSQL (wal_level = logical) with databases m1
(directory, shards 0-3), m2 (shards 4-7) and m3 (empty); a move replicates
between databases of that one server (subscription with create_slot = false, the
slot made separately). Each test that moves a shard moves it back, so the rest of
the session sees the usual map.
"""

import secrets
import time
from collections import Counter, defaultdict
from typing import Any

import gevent
import psycopg2
import pytest

from messenger import runtime
from messenger.errors import Unavailable
from messenger.settings import ConfigError, Settings, load
from messenger.storage import moves, placement, shardmap
from messenger.storage.migrate import MigrateRefused, migrate
from messenger.storage.router import Router
from messenger.storage.shards import ACTIVE, FROZEN, schema_name
from tests import conftest
from tests.conftest import TEST_SHARDS, Services, stored_events

User = conftest.TestUser

# Shards of m2 the tests move to m3 and back.
LOAD_SHARD = 6
CRASH_SHARD = 7
FOLLOW_WAIT_SECS = 5.0
# PostgreSQL's statistics (the row counts of `messenger shards`) lag by about a
# second; a busy machine gets more.
STATS_WAIT_SECS = 10.0
# How long the under-load test holds the check up after the switch.
VERIFY_HOLD_SECS = 1.5
# Where the session's map puts each shard (tests/conftest.py).
HOME = ("m1",) * 4 + ("m2",) * 4


@pytest.fixture
def mover(settings: Settings, app: Any) -> Any:
    """A router of its own, as `messenger move-shard` builds one."""
    router = Router.from_settings(settings)
    yield router
    # A test that failed mid-move leaves the session's map as it found it.
    move = moves.current_move(router)
    if move is not None:
        moves.abort_move(router, move.shard)
    stored = placement.stored_map(router)
    for shard, database in enumerate(stored.database_by_shard):
        home = HOME[shard]
        if database != home:
            move_back(router, shard, home)
    moves.drop_moved_shards(router)
    router.close()


def wait_for_epoch(epoch: int) -> None:
    """Wait (bounded) until the in-process app routes by `epoch`."""
    deadline = time.monotonic() + FOLLOW_WAIT_SECS
    while runtime.get().router.shard_map.epoch < epoch:
        assert time.monotonic() < deadline, "the app did not follow the map"
        gevent.sleep(0.02)


def set_state(router: Router, shard: int, state: str) -> int:
    stored = placement.stored_map(router)
    with router.directory("test_state") as cur:
        return shardmap.set_shard(
            cur, shard, database=stored.database_by_shard[shard], state=state
        )


def users_on(make_user: Any, shard: int, count: int) -> list[User]:
    found: list[User] = []
    for _ in range(count * TEST_SHARDS * 4):
        user = make_user("mv")
        if user.id % TEST_SHARDS == shard:
            found.append(user)
            if len(found) == count:
                return found
    raise AssertionError(f"no users landed on shard {shard}")


def group_on(client: Any, owner: User, members: list[User], shard: int) -> int:
    for _ in range(TEST_SHARDS * 4):
        r = client.post(
            "/v1/conversations",
            headers=owner.headers,
            json={"kind": "group", "title": "g", "member_ids": [m.id for m in members]},
        )
        assert r.status_code == 201, r.get_json()
        conversation_id = int(r.get_json()["conversation"]["id"])
        if conversation_id % TEST_SHARDS == shard:
            return conversation_id
    raise AssertionError(f"no group landed on shard {shard}")


def move_back(mover: Router, shard: int, home: str) -> None:
    moves.drop_moved_shards(mover, shard)
    moves.move_shard(mover, shard, home)
    moves.drop_moved_shards(mover, shard)


# -- the map as data ---------------------------------------------------------------


def test_migrate_seeds_the_map_from_the_settings(mover: Router) -> None:
    stored = placement.stored_map(mover)
    assert stored.shards == TEST_SHARDS
    assert stored.database_by_shard == ("m1",) * 4 + ("m2",) * 4
    assert set(stored.state_by_shard) == {ACTIVE}
    assert {"m1", "m2", "m3"} <= set(stored.databases)


def test_a_different_shard_count_refuses_to_start(services: Services) -> None:
    env = services.env(
        MESSENGER_SHARDS="16", MESSENGER_SHARD_MAP=f"0-15={services.pg.dsn('m1')}"
    )
    with pytest.raises(ConfigError, match="MESSENGER_SHARDS is 16 but the directory"):
        Router.from_settings(load(env))


def test_migrate_refuses_a_shard_schema_outside_the_map(
    mover: Router, services: Services
) -> None:
    stray = services.pg.dsn("m2")
    with mover.on_dsn(stray, "test_stray") as cur:
        cur.execute(f"CREATE SCHEMA {schema_name(1)}")
    try:
        with pytest.raises(MigrateRefused, match="shard_0001 already exists in"):
            migrate(mover)
    finally:
        with mover.on_dsn(stray, "test_stray") as cur:
            cur.execute(f"DROP SCHEMA {schema_name(1)}")
    assert migrate(mover).applied == 0


def test_a_frozen_shard_answers_503_and_a_held_poll_keeps_its_cursor(
    client: Any, make_user: Any, mover: Router
) -> None:
    (frozen_user,) = users_on(make_user, 5, 1)
    (other_user,) = users_on(make_user, 1, 1)
    cursor = client.get("/v1/events", headers=frozen_user.headers).get_json()["cursor"]
    held = gevent.spawn(
        client.get, f"/v1/events?after={cursor}&timeout=2", headers=frozen_user.headers
    )
    gevent.sleep(0.3)
    frozen_at = time.monotonic()
    epoch = set_state(mover, 5, FROZEN)
    try:
        wait_for_epoch(epoch)
        # The follower reads the epoch five times a second: about a second, even
        # on a busy machine.
        assert time.monotonic() - frozen_at < 2.0
        r = client.get(f"/v1/events?after={cursor}", headers=frozen_user.headers)
        assert r.status_code == 503, r.get_json()
        assert r.get_json()["error"]["code"] == "unavailable"
        assert r.headers["Retry-After"] == "1"
        assert client.get("/v1/events", headers=other_user.headers).status_code == 200
        answer = held.get(timeout=10)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["cursor"] == cursor
        assert answer.get_json()["events"] == []
    finally:
        wait_for_epoch(set_state(mover, 5, ACTIVE))
    r = client.get(f"/v1/events?after={cursor}", headers=frozen_user.headers)
    assert r.status_code == 200


def test_rebalance_plans_an_even_spread_with_fewest_moves() -> None:
    stored = shardmap.StoredMap(
        8, 1, ("m1",) * 4 + ("m2",) * 4, (ACTIVE,) * 8, ("m1", "m2", "m3")
    )
    plan = placement.plan_rebalance(stored)
    assert [target for _, _, target in plan] == ["m3", "m3"]
    after = list(stored.database_by_shard)
    for shard, source, target in plan:
        assert after[shard] == source
        after[shard] = target
    assert sorted(Counter(after).values()) == [2, 3, 3]
    even = shardmap.StoredMap(8, 1, ("m1", "m2") * 4, (ACTIVE,) * 8, ("m1", "m2"))
    assert placement.plan_rebalance(even) == []


def test_shards_command_shows_the_map_sizes_and_load(
    settings: Settings,
    make_user: Any,
    chat: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from messenger.cli import cmd_shards

    # A direct pair is a row of its lower user's shard (registered first).
    (lower,) = users_on(make_user, LOAD_SHARD, 1)
    chat.direct(make_user("peer"), lower)
    deadline = time.monotonic() + STATS_WAIT_SECS
    while True:
        assert cmd_shards(settings) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        shard_line = next(line for line in lines if line.split()[:1] == ["6"])
        # Row counts are PostgreSQL's statistics, which arrive within a second.
        if "direct_pairs=" in shard_line or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert f"shard map: {TEST_SHARDS} shards, epoch" in out
    assert any(line.split()[:2] == ["m2", "4"] for line in lines), out
    assert shard_line.split()[:3] == ["6", "m2", "active"], out
    assert "direct_pairs=" in shard_line, out


# -- moving a shard ------------------------------------------------------------------


def hold_table(
    services: Services, database: str, shard: int, table: str, hold_secs: float
) -> gevent.Greenlet:
    """Lock a table of a shard's schema against every reader for hold_secs (from
    now: it is locked when this returns); the greenlet that lets it go."""
    conn = psycopg2.connect(services.pg.dsn(database))
    with conn.cursor() as cur:
        cur.execute(f"LOCK TABLE {schema_name(shard)}.{table} IN ACCESS EXCLUSIVE MODE")

    def release() -> None:
        gevent.sleep(hold_secs)
        conn.rollback()
        conn.close()

    return gevent.spawn(release)


@pytest.mark.slow
def test_move_shard_under_load_loses_and_repeats_nothing(
    client: Any,
    make_user: Any,
    chat: Any,
    mover: Router,
    settings: Settings,
    services: Services,
) -> None:
    moved = users_on(make_user, LOAD_SHARD, 3)
    others = [users_on(make_user, s, 1)[0] for s in (0, 2, 4, 5)]
    everyone = moved + others
    extra = make_user("extra")
    group_moved = group_on(client, moved[0], moved[1:] + others[:2], LOAD_SHARD)
    group_other = chat.group(others[0], others[1:] + moved[:1])
    directs = [chat.direct(moved[0], others[3]), chat.direct(others[1], others[2])]
    members = {
        group_moved: [moved[0]] + moved[1:] + others[:2],
        group_other: others + moved[:1],
        directs[0]: [moved[0], others[3]],
        directs[1]: [others[1], others[2]],
    }
    stale = Router.from_settings(settings)  # a process that stops following
    running = True
    acked: list[tuple[int, int, str]] = []
    refused = Counter[str]()
    added_count = 0

    def call(method: str, url: str, user: User, **kw: Any) -> Any:
        for attempt in range(400):
            r = client.open(url, method=method, headers=user.headers, **kw)
            if r.status_code in (404, 409) and attempt:
                # A 503 leaves the outcome unknown: the retry finds it done.
                return r
            if r.status_code != 503:
                return r
            assert r.headers.get("Retry-After"), r.get_json()
            refused[url.split("?")[0].split("/")[2]] += 1
            gevent.sleep(0.05)
        raise AssertionError(f"{url} stayed unavailable")

    def sender(index: int) -> None:
        conversations = list(members)
        for n in range(10_000):
            if not running:
                return
            conversation_id = conversations[(n + index) % len(conversations)]
            group = members[conversation_id]
            user = group[n % len(group)]
            client_msg_id = secrets.token_hex(8)
            r = call(
                "POST",
                f"/v1/conversations/{conversation_id}/messages",
                user,
                json={"client_msg_id": client_msg_id, "body": f"m{n}"},
            )
            assert r.status_code == 201, r.get_json()
            acked.append(
                (conversation_id, r.get_json()["message"]["seq"], client_msg_id)
            )
            if n % 3 == 0:
                r = call(
                    "POST",
                    f"/v1/conversations/{conversation_id}/receipts",
                    user,
                    json={"type": "read", "seq": r.get_json()["message"]["seq"]},
                )
                assert r.status_code == 204, r.get_json()
            gevent.sleep(0.01)

    def poller(user: User) -> None:
        cursor = "0"
        for _ in range(10_000):
            if not running:
                return
            r = call("GET", f"/v1/events?after={cursor}&timeout=0.5", user)
            assert r.status_code == 200, r.get_json()
            cursor = r.get_json()["cursor"]

    def group_changer() -> None:
        nonlocal added_count
        for _ in range(10_000):
            if not running:
                return
            url = f"/v1/conversations/{group_moved}/members"
            r = call("POST", url, moved[0], json={"user_id": extra.id})
            assert r.status_code in (201, 409), r.get_json()
            added_count += 1
            r = call("DELETE", f"{url}/{extra.id}", moved[0])
            assert r.status_code in (204, 404), r.get_json()
            gevent.sleep(0.05)

    load = [gevent.spawn(sender, i) for i in range(3)]
    load += [gevent.spawn(poller, u) for u in everyone]
    load.append(gevent.spawn(group_changer))
    # The check runs after the switch, on the cut-over state: once the shard
    # is switched, the source's messages table is locked for a while, which
    # holds the check up, and meanwhile the moved shard takes sends in m3 (a
    # check reading the target's current state would count them and fail).
    marks: dict[str, int] = {}
    holds: list[gevent.Greenlet] = []

    def on_step(step: str) -> None:
        if step == "switched":
            marks["switched"] = len(acked)
            holds.append(
                hold_table(services, "m2", LOAD_SHARD, "messages", VERIFY_HOLD_SECS)
            )
            holds.append(gevent.spawn_later(VERIFY_HOLD_SECS * 0.9, mark_held))

    def mark_held() -> None:
        marks["held"] = len(acked)

    lines: list[str] = []
    try:
        gevent.sleep(1.5)
        sent_before = len(acked)
        started = time.monotonic()
        result = moves.move_shard(
            mover, LOAD_SHARD, "m3", say=lines.append, on_step=on_step
        )
        move_secs = time.monotonic() - started
        sent_during = len(acked) - sent_before
        gevent.sleep(1.5)
    finally:
        running = False
        gevent.joinall(load + holds, timeout=30)
    for greenlet in load + holds:
        assert greenlet.successful(), greenlet.exception
    print("\n".join(lines))
    print(
        f"move: {result.rows} rows, {result.copy_bytes / 1e6:.2f} MB copied in "
        f"{result.copy_secs:.2f} s ({result.rows / result.copy_secs:.0f} rows/s, "
        f"{result.copy_bytes / 1e6 / result.copy_secs:.2f} MB/s); fence "
        f"{result.fence_secs:.2f} s, then verify {result.verify_secs:.2f} s (held "
        f"{VERIFY_HOLD_SECS} s); {len(acked)} messages acked ({sent_during} "
        f"during the move), {added_count} group changes; 503s: {dict(refused)}"
    )
    assert sent_before >= 10 and sent_during >= 1, (sent_before, sent_during)
    assert result.fence_secs < 5, result.fence_secs
    # The check took the hold and more; the fence was over before it began:
    # the moved shard acknowledged sends while the check waited, and the check
    # still found the copy equal to the source.
    assert result.verify_secs >= VERIFY_HOLD_SECS, result.verify_secs
    assert result.fence_secs + result.verify_secs <= move_secs
    during_check = acked[marks["switched"] : marks["held"]]
    assert any(a[0] == group_moved for a in during_check), marks
    assert result.tables["messages"].rows > 0
    assert any("copying" in line or "copied" in line for line in lines), lines
    # The pair of directs[0] is a row of moved[0]'s shard (the lower id): it
    # moved too, and opening the conversation again finds it there.
    assert result.tables["direct_pairs"].rows >= 1
    r = client.post(
        "/v1/conversations",
        headers=others[3].headers,
        json={"kind": "direct", "user_id": moved[0].id},
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["conversation"]["id"] == directs[0]

    # The app follows the new map; the moved shard takes writes in m3.
    app_map = runtime.get().router.shard_map
    assert app_map.name_of_dsn(app_map.dsn_of_shard(LOAD_SHARD)) == "m3"
    assert not app_map.is_frozen(LOAD_SHARD)

    # Every acknowledged message, once, in order, in the history of its
    # conversation and in every member's stream; event ids without gaps.
    by_conversation: dict[int, dict[int, str]] = defaultdict(dict)
    for conversation_id, seq, client_msg_id in acked:
        by_conversation[conversation_id][seq] = client_msg_id
    for conversation_id, sent in by_conversation.items():
        history: dict[int, str] = {}
        after = 0
        for _ in range(1000):
            r = client.get(
                f"/v1/conversations/{conversation_id}/messages?after={after}&limit=200",
                headers=members[conversation_id][0].headers,
            )
            assert r.status_code == 200, r.get_json()
            page = r.get_json()["messages"]
            history.update({m["seq"]: m["client_msg_id"] for m in page})
            if not r.get_json()["next_after"]:
                break
            after = r.get_json()["next_after"]
        assert sorted(history) == list(range(1, len(history) + 1))
        assert all(history[seq] == cmid for seq, cmid in sent.items())
    for user in everyone:
        events, _ = chat.drain(user, "0")
        stored = stored_events(events)
        ids = [int(e["id"]) for e in stored]
        assert ids == list(range(ids[0], ids[0] + len(ids))), user.id
        seen = Counter(
            (e["message"]["conversation_id"], e["message"]["seq"])
            for e in stored
            if e["type"] == "message"
        )
        assert all(n == 1 for n in seen.values()), user.id
        for conversation_id, group in members.items():
            if user in group:
                for seq in by_conversation[conversation_id]:
                    assert seen[(conversation_id, seq)] == 1, (user.id, seq)
    extra_events = stored_events(chat.drain(extra, "0")[0])
    added = [e for e in extra_events if e["type"] == "member_added"]
    assert len(added) == added_count

    # A process still routing by the old map gets an error, not a write.
    user = moved[0]
    with pytest.raises(Unavailable), stale.on_user(user.id, "stale_write") as cur:
        cur.run(
            "UPDATE {s}.user_state SET last_event_id = last_event_id + 1 "
            "WHERE user_id = %s",
            (user.id,),
        )
    stale.close()
    move_back(mover, LOAD_SHARD, "m2")


class Crash(Exception):
    pass


def crash_at(step: str) -> Any:
    def on_step(done: str) -> None:
        if done == step:
            raise Crash(step)

    return on_step


@pytest.mark.slow
def test_a_move_crashed_while_fenced_resumes_and_one_crashed_while_copying_rolls_back(
    client: Any, make_user: Any, chat: Any, mover: Router, services: Services
) -> None:
    (user,) = users_on(make_user, CRASH_SHARD, 1)
    (peer,) = users_on(make_user, 0, 1)
    conversation_id = chat.direct(peer, user)
    for n in range(5):
        chat.send(peer, conversation_id, f"before {n}")
    with pytest.raises(Crash):
        moves.move_shard(mover, CRASH_SHARD, "m3", on_step=crash_at("fenced"))
    assert moves.current_move(mover, CRASH_SHARD).step == "fenced"
    wait_for_epoch(placement.stored_map(mover).epoch)
    r = client.get("/v1/events?after=0", headers=user.headers)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    # The source is fenced: even a write past the router fails, direct pairs
    # (user's shard: the lower id) included.
    for statement in (
        "UPDATE {}.user_state SET last_event_id = last_event_id",
        "INSERT INTO {}.direct_pairs VALUES (1, 2, 3)",
    ):
        fenced = mover.on_dsn(services.pg.dsn("m2"), "test_fenced")
        with pytest.raises(Unavailable), fenced as cur:
            cur.execute(statement.format(schema_name(CRASH_SHARD)))
    result = moves.move_shard(mover, CRASH_SHARD, "m3")
    assert result.tables["user_state"].rows >= 1
    assert result.tables["direct_pairs"].rows >= 1
    wait_for_epoch(placement.stored_map(mover).epoch)
    chat.send(peer, conversation_id, "after")
    events = stored_events(chat.drain(user, "0")[0])
    bodies = [e["message"]["body"] for e in events if e["type"] == "message"]
    assert bodies == [f"before {n}" for n in range(5)] + ["after"]

    # Back to m2, crashing once the copy is done: abort leaves it all as before.
    moves.drop_moved_shards(mover, CRASH_SHARD)
    with pytest.raises(Crash):
        moves.move_shard(mover, CRASH_SHARD, "m2", on_step=crash_at("copied"))
    assert moves.abort_move(mover, CRASH_SHARD)
    assert moves.current_move(mover) is None
    stored = placement.stored_map(mover)
    assert stored.database_by_shard[CRASH_SHARD] == "m3"
    assert stored.state_by_shard[CRASH_SHARD] == ACTIVE
    with mover.on_dsn(services.pg.dsn("m2"), "test_clean", transaction=False) as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = %s), "
            "(SELECT count(*) FROM pg_replication_slots), "
            "(SELECT count(*) FROM pg_publication)",
            (schema_name(CRASH_SHARD),),
        )
        assert cur.fetchone() == (0, 0, 0)
    wait_for_epoch(stored.epoch)
    chat.send(peer, conversation_id, "after abort")
    move_back(mover, CRASH_SHARD, "m2")
    wait_for_epoch(placement.stored_map(mover).epoch)
    events = stored_events(chat.drain(user, "0")[0])
    assert [e["message"]["body"] for e in events if e["type"] == "message"][-2:] == [
        "after",
        "after abort",
    ]


def schema_exists(mover: Router, services: Services, database: str, shard: int) -> bool:
    dsn = services.pg.dsn(database)
    with mover.on_dsn(dsn, "test_schema", transaction=False) as cur:
        cur.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_name(shard),)
        )
        return cur.fetchone() is not None


@pytest.mark.slow
def test_a_move_whose_check_fails_after_the_switch_stays_open_until_closed(
    client: Any,
    make_user: Any,
    chat: Any,
    mover: Router,
    services: Services,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from messenger.cli import cmd_move_shard

    (user,) = users_on(make_user, CRASH_SHARD, 1)
    (peer,) = users_on(make_user, 0, 1)
    conversation_id = chat.direct(peer, user)
    chat.send(peer, conversation_id, "before")
    schema = schema_name(CRASH_SHARD)
    # A pair of no user, on the target only: the copy differs at the cut-over.
    stray = 9_300_000_000_000 + CRASH_SHARD

    def tamper(step: str) -> None:
        if step == "caught_up":
            with mover.on_dsn(services.pg.dsn("m3"), "test_tamper") as cur:
                cur.execute(
                    f"INSERT INTO {schema}.direct_pairs VALUES (%s, %s, 1)",
                    (stray, stray + 8),
                )

    try:
        with pytest.raises(moves.MoveError) as failed:
            moves.move_shard(mover, CRASH_SHARD, "m3", on_step=tamper)
        assert "differed from the source at the cut-over in direct_pairs." in str(
            failed.value
        )
        # The switch happened: the shard serves from m3, the move stays open.
        stored = placement.stored_map(mover)
        assert stored.database_by_shard[CRASH_SHARD] == "m3"
        assert stored.state_by_shard[CRASH_SHARD] == ACTIVE
        assert moves.current_move(mover, CRASH_SHARD).step == "unverified"
        wait_for_epoch(stored.epoch)
        chat.send(peer, conversation_id, "after the switch")
        events = stored_events(chat.drain(user, "0")[0])
        assert [e["message"]["body"] for e in events if e["type"] == "message"] == [
            "before",
            "after the switch",
        ]
        # Running it again says so; the old copy is kept to compare with.
        assert cmd_move_shard(settings, CRASH_SHARD, "m3", abort=False) == 1
        assert "could not be verified" in capsys.readouterr().err
        assert moves.drop_moved_shards(mover, CRASH_SHARD) == []
        assert schema_exists(mover, services, "m2", CRASH_SHARD)
        # Another move waits for this one to be closed.
        with pytest.raises(moves.MoveError, match="one move at a time"):
            moves.move_shard(mover, LOAD_SHARD, "m3")
        assert cmd_move_shard(settings, CRASH_SHARD, None, abort=True) == 0
        assert "closed the move without its check" in capsys.readouterr().out
        assert moves.current_move(mover) is None
        assert placement.stored_map(mover).database_by_shard[CRASH_SHARD] == "m3"
    finally:
        with mover.on_dsn(services.pg.dsn("m3"), "test_untamper") as cur:
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
            if cur.fetchone():
                cur.execute(
                    f"DELETE FROM {schema}.direct_pairs WHERE user_lo = %s", (stray,)
                )

    # Back to m2 with the command: its output times the fence and the check.
    assert moves.drop_moved_shards(mover, CRASH_SHARD) == [(CRASH_SHARD, "m2")]
    assert cmd_move_shard(settings, CRASH_SHARD, "m2", abort=False) == 0
    out = capsys.readouterr().out
    assert "writes were fenced for" in out and "then verify" in out, out
    assert "(counts and checksums equal at the cut-over)" in out, out

    # A run that dies after the switch takes the cut-over state with it: the
    # check cannot be made any more, and the move stays open until closed.
    moves.drop_moved_shards(mover, CRASH_SHARD)
    with pytest.raises(Crash):
        moves.move_shard(mover, CRASH_SHARD, "m3", on_step=crash_at("switched"))
    assert moves.current_move(mover, CRASH_SHARD).step == "switched"
    with pytest.raises(moves.MoveError, match="ended before checking the copy"):
        moves.move_shard(mover, CRASH_SHARD, "m3")
    assert moves.current_move(mover, CRASH_SHARD).step == "unverified"
    assert moves.abort_move(mover, CRASH_SHARD)
    assert placement.stored_map(mover).database_by_shard[CRASH_SHARD] == "m3"
    with mover.on_dsn(services.pg.dsn("m2"), "test_clean", transaction=False) as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM pg_replication_slots), "
            "(SELECT count(*) FROM pg_publication)"
        )
        assert cur.fetchone() == (0, 0)
    wait_for_epoch(placement.stored_map(mover).epoch)
    chat.send(peer, conversation_id, "last")
    events = stored_events(chat.drain(user, "0")[0])
    assert [e["message"]["body"] for e in events if e["type"] == "message"][-1] == (
        "last"
    )


def test_add_database_records_a_name_and_says_to_configure_it(
    settings: Settings,
    services: Services,
    mover: Router,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from messenger.cli import cmd_add_database

    services.pg.create_database("m4")
    try:
        assert cmd_add_database(settings, f"m4={services.pg.dsn('m4')}") == 0
        out = capsys.readouterr().out
        assert "add-database: m4 " in out and "added; wal_level = logical" in out
        assert "add m4=" in out and "to MESSENGER_DATABASES on every process" in out
        assert "m4" in placement.stored_map(mover).databases
        # m4 has no URL in these settings: a rebalance leaves it out.
        assert placement.plan_rebalance(
            placement.stored_map(mover), mover.databases
        ) == placement.plan_rebalance(placement.stored_map(mover), ["m1", "m2", "m3"])
        with pytest.raises(ConfigError, match="another URL"):
            cmd_add_database(settings, f"m3={services.pg.dsn('m4')}")
    finally:
        with mover.directory("test_forget") as cur:
            cur.execute("DELETE FROM directory.shard_databases WHERE name = 'm4'")


@pytest.mark.slow
def test_rebalance_apply_spreads_two_databases_over_three(
    settings: Settings,
    mover: Router,
    client: Any,
    make_user: Any,
    chat: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from messenger.cli import cmd_rebalance

    assert cmd_rebalance(settings, apply=False) == 0
    planned = capsys.readouterr().out
    assert planned.count("rebalance: ") == 2, planned
    assert cmd_rebalance(settings, apply=True) == 0
    out = capsys.readouterr().out
    assert "rebalance: done, 2 shard(s) moved" in out, out
    stored = placement.stored_map(mover)
    assert sorted(Counter(stored.database_by_shard).values()) == [2, 3, 3]
    moved = [s for s, name in enumerate(stored.database_by_shard) if name == "m3"]
    wait_for_epoch(stored.epoch)
    # The moved shards serve: a conversation between users on them works.
    a, b = (users_on(make_user, shard, 1)[0] for shard in moved)
    conversation_id = chat.direct(a, b)
    chat.send(a, conversation_id, "on m3")
    events = stored_events(chat.drain(b, "0")[0])
    assert [e["message"]["body"] for e in events if e["type"] == "message"] == ["on m3"]
    assert cmd_rebalance(settings, apply=False) == 0
    assert "nothing to move" in capsys.readouterr().out
    for shard in moved:
        move_back(mover, shard, "m1" if shard < 4 else "m2")
    wait_for_epoch(placement.stored_map(mover).epoch)


@pytest.mark.slow
def test_copy_speed_of_a_larger_shard(mover: Router, services: Services) -> None:
    """Moves shard 6 with 100 000 extra mailbox rows (of no user) and back,
    verifying every row; prints the copy speed (`pytest -s`)."""
    rows = 100_000
    schema = schema_name(LOAD_SHARD)
    with mover.on_dsn(services.pg.dsn("m2"), "test_fill") as cur:
        cur.execute(
            f"INSERT INTO {schema}.mailbox (user_id, conversation_id, seq, "
            "sender_id, client_msg_id, body, created_at) "
            "SELECT 8000000000 + %s, 1, n, 1, md5(n::text), repeat('x', 200), now() "
            "FROM generate_series(1, %s) AS n",
            (LOAD_SHARD, rows),
        )
    try:
        result = moves.move_shard(mover, LOAD_SHARD, "m3")
        assert result.tables["mailbox"].rows >= rows
        print(
            f"\ncopy: {result.rows} rows, {result.copy_bytes / 1e6:.1f} MB in "
            f"{result.copy_secs:.2f} s: {result.rows / result.copy_secs:.0f} rows/s, "
            f"{result.copy_bytes / 1e6 / result.copy_secs:.1f} MB/s; fence "
            f"{result.fence_secs:.2f} s, then verify {result.verify_secs:.2f} s"
        )
        moves.drop_moved_shards(mover, LOAD_SHARD)
        with mover.on_dsn(services.pg.dsn("m3"), "test_empty") as cur:
            cur.execute(
                f"DELETE FROM {schema}.mailbox WHERE user_id = 8000000000 + %s",
                (LOAD_SHARD,),
            )
        move_back(mover, LOAD_SHARD, "m2")
    finally:
        for name in ("m2", "m3"):
            with mover.on_dsn(services.pg.dsn(name), "test_empty") as cur:
                cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
                if cur.fetchone():
                    cur.execute(
                        f"DELETE FROM {schema}.mailbox WHERE user_id = 8000000000 + %s",
                        (LOAD_SHARD,),
                    )


def test_move_shard_command_refuses_clearly(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from messenger.cli import cmd_move_shard

    assert cmd_move_shard(settings, 2, "m1", abort=False) == 1
    assert "move-shard: Shard 2 is already in m1." in capsys.readouterr().err
    assert cmd_move_shard(settings, 99, "m3", abort=False) == 1
    assert "There is no shard 99: shards are 0..7." in capsys.readouterr().err
    assert cmd_move_shard(settings, 2, "nowhere", abort=False) == 1
    assert "MESSENGER_DATABASES has no URL for nowhere" in capsys.readouterr().err
    assert cmd_move_shard(settings, 2, None, abort=True) == 0
    assert "no move of shard 2 is under way" in capsys.readouterr().out
