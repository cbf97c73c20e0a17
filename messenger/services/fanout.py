"""Outbox rows → every recipient's event stream, then wake their polls.

Fan-outs of one conversation read their outbox one at a time (an advisory lock
on the conversation's database) and write in outbox order; each database's
writes lock the members' counters first, and a fan-out writes every row not yet
delivered to that database, so each member's events follow the conversation's
seq order even when two fan-outs reach a database together. Progress is kept per
recipient (outbox `delivered`): one server down delays only its own members.
Every write is idempotent (mailbox primary key, event origin), so a replay after
a crash inserts nothing twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Container, Iterable
from dataclasses import dataclass, replace

import gevent

from messenger import metrics, runtime
from messenger.errors import Unavailable
from messenger.models import Message
from messenger.storage import events as event_store
from messenger.storage.events import FanoutBatch, OutboxRow
from messenger.storage.pools import ShardCursor
from messenger.storage.router import Router
from messenger.storage.shards import ShardMap, schema_name
from messenger.storage.transaction import PipelinedTransaction
from messenger.views import message_json

logger = logging.getLogger(__name__)

# Events after which a member's conversation list moves that conversation up.
_TOUCHING_EVENTS = frozenset({"conversation_updated", "member_added"})


def fan_out(conversation_id: int) -> int:
    """Deliver every pending outbox row of a conversation; returns how many rows
    reached every recipient (and were deleted).

    Server by server: the recipients on the conversation's own database first,
    in the transaction that locks the conversation's fan-out; then each other
    database at once and concurrently, each in its own transaction, its
    progress recorded on the row (`delivered`). A database that is down or does
    not answer within REMOTE_TIMEOUT_SECS is left for a later fan-out (the
    sweeper's), while the members elsewhere get their events and their wakes
    now. Writes are idempotent, so a fan-out cut between a remote commit and its
    progress record inserts nothing twice when replayed.

    Waits for every database (the sweeper, `messenger sweep`); request paths use
    start_fan_out.

    Raises:
        Unavailable: the conversation's own database is down (the sweeper
            retries later).
    """
    rt = runtime.get()
    started = time.monotonic()
    pending = _fan_out_own_database(rt, conversation_id)
    if pending is None:
        return 0
    remotes = [
        gevent.spawn(_fan_out_remote, rt, pending, dsn)
        for dsn in sorted(pending.remote)
    ]
    gevent.joinall(remotes)
    metrics.FANOUT_SECONDS.observe(time.monotonic() - started)
    return pending.finished + sum(g.value or 0 for g in remotes)


def start_fan_out(conversation_id: int) -> None:
    """fan_out for request paths, after their commit, without waiting on any
    other database.

    The recipients on the conversation's own database (the one the request just
    committed on; all of them in a one-server deployment) have their events and
    wakes when this returns: a few milliseconds. Each other database's part runs
    behind the answer, in this worker's bounded pool (Runtime.background_fanouts),
    so a slow or hung server never holds a request, nor the healthy servers'
    connections it would hold. While the pool is full, that part stays in the
    outbox for the conversation's next fan-out or the sweeper (rows older than
    SWEEP_AFTER_SECS, every sweeper interval). A failure is logged; the sweeper
    finishes what it left.
    """
    rt = runtime.get()
    started = time.monotonic()
    try:
        pending = _fan_out_own_database(rt, conversation_id)
    except Exception:  # noqa: BLE001 - the change is already durable
        logger.warning(
            "conversation %s: fan-out deferred to the sweeper",
            conversation_id,
            exc_info=True,
        )
        return
    if pending is None:
        return
    parts = []
    for dsn in sorted(pending.remote):
        if rt.background_fanouts.full():
            metrics.FANOUTS_LEFT_TO_SWEEPER.inc()
            logger.info(
                "conversation %s: fan-out to %s left to the sweeper (%d running)",
                conversation_id,
                rt.router.pools[dsn].label,
                len(rt.background_fanouts),
            )
            return
        parts.append(
            rt.background_fanouts.spawn(_fan_out_remote_logged, rt, pending, dsn)
        )
    if not parts:
        metrics.FANOUT_SECONDS.observe(time.monotonic() - started)
        return
    left = len(parts)

    def part_ended(_: gevent.Greenlet) -> None:
        nonlocal left
        left -= 1
        if not left:
            metrics.FANOUT_SECONDS.observe(time.monotonic() - started)

    for part in parts:
        part.link(part_ended)


@dataclass(frozen=True)
class _Pending:
    """What the first step of a fan-out left to the other databases."""

    conv_dsn: str
    conv_schema: str
    rows: list[OutboxRow]
    # dsn → schema → recipients there not yet delivered, over all rows.
    remote: dict[str, dict[str, set[int]]]
    # Rows that first step finished (no recipient elsewhere was left).
    finished: int


def _fan_out_own_database(rt: runtime.Runtime, conversation_id: int) -> _Pending | None:
    """The part of a conversation's fan-out on its own database: under the
    conversation's fan-out lock, its pending rows to the recipients there, then
    their wakes and hooks; None when nothing was pending."""
    router = rt.router
    conv_dsn = router.dsn_of(conversation_id)
    conv_schema = router.schema_of(conversation_id)
    event_ids: dict[str, dict[int, int]] = {}
    with router.on_dsn(conv_dsn, "fanout") as cur:
        cur.schema = conv_schema
        rows = event_store.pending_outbox(cur, conversation_id)
        if not rows:
            return None
        outbox_ids = [r.outbox_id for r in rows]
        plan = _by_database(router, rows)
        local = plan.pop(conv_dsn, None)
        if local:
            _write(router, cur, local, rows, event_ids)
            cur.schema = conv_schema
            event_store.mark_delivered(cur, conversation_id, outbox_ids, _users(local))
        finished = event_store.delete_delivered(cur, outbox_ids)
    if local:
        _delivered(rt, rows, set(_users(local)), event_ids)
    return _Pending(conv_dsn, conv_schema, rows, dict(plan), finished)


# A remote database that has not taken a fan-out's writes within this long is
# treated as down (its breaker opens): a server that accepts connections but
# never answers (hung, SIGSTOPped) must not hold fan-outs, and the healthy
# servers' connections they hold, for minutes.
REMOTE_TIMEOUT_SECS = 5.0


def _fan_out_remote(rt: runtime.Runtime, pending: _Pending, dsn: str) -> int:
    """One other database's part of a fan-out; rows finished by it."""
    router = rt.router
    schemas = pending.remote[dsn]
    rows = pending.rows
    event_ids: dict[str, dict[int, int]] = {}
    timer = gevent.Timeout(REMOTE_TIMEOUT_SECS)
    timer.start()
    try:
        with router.on_dsn(dsn, "fanout_remote") as remote:
            written_before = _write(
                router, remote, schemas, rows, event_ids, may_be_late=True
            )
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        logger.warning(
            "fan-out to %s: no answer within %s s; left for the sweeper",
            router.pools[dsn].label,
            REMOTE_TIMEOUT_SECS,
        )
        return 0
    except Unavailable as exc:
        logger.info("fan-out to a database deferred: %s", exc.message)
        return 0
    finally:
        timer.close()
    users = _users(schemas)
    outbox_ids = [r.outbox_id for r in rows]
    try:
        with router.on_dsn(pending.conv_dsn, "fanout_progress") as cur:
            cur.schema = pending.conv_schema
            event_store.mark_delivered(cur, rows[0].conversation_id, outbox_ids, users)
            finished = event_store.delete_delivered(cur, outbox_ids)
    except Unavailable:
        # Delivered but not recorded: a replay writes nothing twice.
        finished = 0
    _delivered(rt, rows, set(users), event_ids, written_before)
    return finished


def _fan_out_remote_logged(rt: runtime.Runtime, pending: _Pending, dsn: str) -> None:
    """_fan_out_remote behind a request's answer: nobody waits for its result,
    so what it raises is logged here (the sweeper finishes the part)."""
    try:
        _fan_out_remote(rt, pending, dsn)
    except Exception:  # noqa: BLE001 - the change is already durable
        logger.warning(
            "conversation %s: fan-out to %s deferred to the sweeper",
            pending.rows[0].conversation_id,
            rt.router.pools[dsn].label,
            exc_info=True,
        )


def _users(schemas: dict[str, set[int]]) -> list[int]:
    return sorted({u for users in schemas.values() for u in users})


def _delivered(
    rt: runtime.Runtime,
    rows: list[OutboxRow],
    users: set[int],
    event_ids: dict[str, dict[int, int]],
    written_before: Container[tuple[int, str]] = frozenset(),
) -> None:
    """Wake the users whose streams just got these rows' events, in outbox order
    (each member's ids ascend; a message's wake carries them: _wake_for_message),
    and run the after-fan-out hooks (push) for them: each recipient once per row.

    The pairs (user, origin) in written_before were written by another fan-out,
    which ran the hooks for them: they are left out of the hooks here (a late
    part must not push a message again). They are still woken: a wake costs
    little, and the fan-out that wrote them may have been cut off before its own.
    """
    for row in rows:
        woken = sorted(set(row.undelivered) & users)
        if row.message is not None:
            _wake_for_message(row.message, woken, event_ids)
        elif woken:
            rt.waker.wake_users(woken)
    hooked = []
    for row in rows:
        origin = event_store.origin_of(row)
        mine = tuple(
            u
            for u in row.undelivered
            if u in users and (u, origin) not in written_before
        )
        if mine:
            hooked.append(replace(row, recipients=mine))
    _after_fanout(hooked)


@dataclass(frozen=True)
class InlinePlan:
    """A message's fan-out written in its sender's transaction: each shard schema
    of the conversation's database with its recipients, in lock order."""

    by_schema: tuple[tuple[str, tuple[int, ...]], ...]


def plan_inline(
    shard_map: ShardMap, conversation_id: int, recipients: Iterable[int]
) -> InlinePlan | None:
    """Whether a just-stored message's fan-out can go inline: when every
    recipient's shard shares the conversation's database, the plan of the writes;
    None otherwise (the fan-out then goes through the outbox).

    Schemas come in sorted order, each locking its users in id order: one global
    lock order, so concurrent fan-outs can't deadlock.
    """
    conv_dsn = shard_map.dsn_of_shard(shard_map.shard_of(conversation_id))
    by_schema: dict[str, list[int]] = defaultdict(list)
    for user_id in recipients:
        shard = shard_map.shard_of(user_id)
        # A frozen (moving) shard takes no writes: its part waits in the outbox.
        if shard_map.dsn_of_shard(shard) != conv_dsn or shard_map.is_frozen(shard):
            return None
        by_schema[schema_name(shard)].append(user_id)
    return InlinePlan(
        tuple(
            (schema, tuple(sorted(by_schema[schema]))) for schema in sorted(by_schema)
        )
    )


def write_inline_and_commit(
    tx: PipelinedTransaction, message: Message, plan: InlinePlan
) -> dict[int, int]:
    """Write a just-stored message into every recipient's stream and commit, in
    the sender's transaction and one round trip.

    The conversation's row lock, held since the seq bump, keeps fan-outs of one
    conversation in seq order.

    Returns:
        user id → the message's event id in that user's stream, for every
        recipient that got one (a member removed meanwhile gets none).
    """
    batch = FanoutBatch(tx.cur)
    for schema, user_ids in plan.by_schema:
        batch.message(schema, user_ids, message, report_ids=True)
    with event_store.collect_event_ids(tx.cur) as event_ids:
        tx.commit(batch.sql())
    return event_ids.get(event_store.message_origin(message), {})


def after_commit(
    message: Message, recipients: Iterable[int], event_ids: dict[int, int]
) -> None:
    """Wake the members and run the after-fan-out hooks (push) for one message
    whose fan-out was committed inline (event_ids: write_inline_and_commit's)."""
    ids = sorted(set(recipients))
    _wake_for_message(message, ids, {event_store.message_origin(message): event_ids})
    _after_fanout(
        [
            OutboxRow(
                0,
                message.conversation_id,
                "message",
                tuple(ids),
                {},
                message.created_at,
                message,
            )
        ]
    )


def _wake_for_message(
    message: Message,
    recipients: Iterable[int],
    event_ids: dict[str, dict[int, int]],
) -> None:
    """Wake a message's recipients once its fan-out committed.

    The wake carries each member's new event id and the event's JSON, so a poll
    whose cursor is the id before answers without reading its database
    (realtime/hub.py). Members without a reported id get a plain wake.
    """
    waker = runtime.get().waker
    ids = event_ids.get(event_store.message_origin(message), {})
    if ids:
        waker.deliver(
            "message",
            ids,
            json.dumps(
                {"message": message_json(message)},
                separators=(",", ":"),
                ensure_ascii=False,
            ),
        )
    plain = sorted({u for u in recipients if u not in ids})
    if plain:
        waker.wake_users(plain)


def _by_database(
    router: Router, rows: list[OutboxRow]
) -> dict[str, dict[str, set[int]]]:
    """dsn → schema → recipients not yet delivered, over all rows."""
    plan: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for row in rows:
        for user_id in row.undelivered:
            plan[router.dsn_of(user_id)][router.schema_of(user_id)].add(user_id)
    return plan


def _write(
    router: Router,
    cur: ShardCursor,
    schemas: dict[str, set[int]],
    rows: list[OutboxRow],
    event_ids: dict[str, dict[int, int]],
    *,
    may_be_late: bool = False,
) -> set[tuple[int, str]]:
    """One database's part of the rows' fan-out; the messages' new event ids
    are added to event_ids (origin → user → id). Returns the (user, origin)
    pairs left out because they were written already.

    may_be_late: the rows were read before this transaction, outside the
    conversation's fan-out lock (another database's part), so a newer fan-out
    of the conversation may have written them, and later rows, here already.
    Each row then leaves out the users holding its event: written again, it
    would undo the later rows (bring back an edit's older text, or the list
    entry of a member removed since). One more round trip.
    """
    batch = FanoutBatch(cur)
    applied: set[tuple[int, str]] = set()
    if may_be_late:
        applied = event_store.lock_and_find_applied(
            cur,
            {schema: sorted(users) for schema, users in schemas.items()},
            [event_store.origin_of(row) for row in rows],
        )
    else:
        for schema in sorted(schemas):
            batch.lock(schema, sorted(schemas[schema]))
    for row in rows:
        origin = event_store.origin_of(row)
        by_schema: dict[str, list[int]] = defaultdict(list)
        for user_id in row.undelivered:
            schema = router.schema_of(user_id)
            if user_id in schemas.get(schema, ()) and (user_id, origin) not in applied:
                by_schema[schema].append(user_id)
        for schema in sorted(by_schema):
            users = by_schema[schema]
            if row.message is not None:
                batch.message(schema, users, row.message, report_ids=True)
                continue
            if row.kind == "message_updated":
                batch.update_mailbox(schema, users, row.payload["event"]["message"])
            joins = [u for u in row.payload.get("join", ()) if u in users]
            leaves = [u for u in row.payload.get("leave", ()) if u in users]
            if joins:
                requests = [u for u in row.payload.get("request", ()) if u in joins]
                batch.join(schema, row.conversation_id, joins, requests)
            batch.event(
                schema,
                users,
                row.conversation_id,
                row.outbox_id,
                row.kind,
                row.payload.get("event", {}),
                touch=row.kind in _TOUCHING_EVENTS,
            )
            if leaves:
                batch.leave(schema, row.conversation_id, leaves)
    with event_store.collect_event_ids(cur) as found:
        batch.execute()
    for origin, ids in found.items():
        event_ids.setdefault(origin, {}).update(ids)
    return applied


def _after_fanout(rows: list[OutboxRow]) -> None:
    """Hooks that run once rows reached every stream (push notifications; the
    composition root connects them, messenger/bootstrap.py)."""
    for hook in runtime.get().after_fanout:
        try:
            hook(rows)
        except Exception:  # noqa: BLE001 - a hook must never undo a delivery
            logger.exception(
                "after-fanout hook %s failed", getattr(hook, "__name__", hook)
            )
