"""Outbox rows → every recipient's event stream, then wake their polls.

Fan-outs of one conversation run one at a time (an advisory lock on the
conversation's database) and in outbox order, so each member's events follow the
conversation's seq order. Every write is idempotent (mailbox primary key, event
origin), so a replay after a crash inserts nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from messenger import metrics, runtime
from messenger.models import Message
from messenger.storage import events as event_store
from messenger.storage.events import FanoutBatch, OutboxRow
from messenger.storage.pools import ShardCursor
from messenger.storage.router import Router
from messenger.storage.shards import ShardMap, schema_name
from messenger.storage.transaction import PipelinedTransaction

logger = logging.getLogger(__name__)

# Events after which a member's conversation list moves that conversation up.
_TOUCHING_EVENTS = frozenset({"conversation_updated", "member_added"})


def fan_out(conversation_id: int) -> int:
    """Deliver every pending outbox row of a conversation; returns how many.

    Raises:
        Unavailable: a database needed is down (the sweeper retries later).
    """
    rt = runtime.get()
    router = rt.router
    started = time.monotonic()
    conv_dsn = router.dsn_of(conversation_id)
    with router.on_dsn(conv_dsn, "fanout") as cur:
        cur.schema = router.schema_of(conversation_id)
        rows = event_store.pending_outbox(cur, conversation_id)
        if not rows:
            return 0
        plan = _by_database(router, rows)
        for dsn in sorted(plan):
            if dsn == conv_dsn:
                _write(router, cur, plan[dsn], rows)
            else:
                with router.on_dsn(dsn, "fanout_remote") as remote:
                    _write(router, remote, plan[dsn], rows)
        cur.schema = router.schema_of(conversation_id)
        event_store.delete_outbox(cur, [r.outbox_id for r in rows])
    recipients = {u for r in rows for u in r.recipients}
    rt.waker.wake_users(sorted(recipients))
    metrics.FANOUT_SECONDS.observe(time.monotonic() - started)
    _after_fanout(rows)
    return len(rows)


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
) -> None:
    """Write a just-stored message into every recipient's stream and commit, in
    the sender's transaction and one round trip.

    The conversation's row lock, held since the seq bump, keeps fan-outs of one
    conversation in seq order.
    """
    batch = FanoutBatch(tx.cur)
    for schema, user_ids in plan.by_schema:
        batch.message(schema, user_ids, message)
    tx.commit(batch.sql())


def after_commit(message: Message, recipients: Iterable[int]) -> None:
    """Wake the members and run the after-fan-out hooks (push) for one message
    whose fan-out was committed inline."""
    ids = sorted(set(recipients))
    runtime.get().waker.wake_users(ids)
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


def _by_database(
    router: Router, rows: list[OutboxRow]
) -> dict[str, dict[str, set[int]]]:
    """dsn → schema → recipients, over all rows."""
    plan: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for row in rows:
        for user_id in row.recipients:
            plan[router.dsn_of(user_id)][router.schema_of(user_id)].add(user_id)
    return plan


def _write(
    router: Router,
    cur: ShardCursor,
    schemas: dict[str, set[int]],
    rows: list[OutboxRow],
) -> None:
    batch = FanoutBatch(cur)
    for schema in sorted(schemas):
        batch.lock(schema, sorted(schemas[schema]))
    for row in rows:
        by_schema: dict[str, list[int]] = defaultdict(list)
        for user_id in row.recipients:
            schema = router.schema_of(user_id)
            if schema in schemas:
                by_schema[schema].append(user_id)
        for schema in sorted(by_schema):
            users = by_schema[schema]
            if row.message is not None:
                batch.message(schema, users, row.message)
                continue
            joins = [u for u in row.payload.get("join", ()) if u in users]
            leaves = [u for u in row.payload.get("leave", ()) if u in users]
            if joins:
                batch.join(schema, row.conversation_id, joins)
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
    batch.execute()


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


def fan_out_quietly(conversation_id: int) -> None:
    """fan_out for request paths: a failure is logged; the sweeper finishes it."""
    try:
        fan_out(conversation_id)
    except Exception:  # noqa: BLE001 - the message is already durable
        logger.warning(
            "conversation %s: fan-out deferred to the sweeper",
            conversation_id,
            exc_info=True,
        )
