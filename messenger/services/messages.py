"""Sending (idempotent, durable before acknowledged) and reading history."""

from __future__ import annotations

import logging

from messenger import runtime
from messenger.errors import NotFound
from messenger.models import Message
from messenger.services import blocks, fanout
from messenger.storage import messages as store
from messenger.storage.transaction import pipelined_transaction

logger = logging.getLogger(__name__)


def send(
    sender_id: int, conversation_id: int, *, client_msg_id: str, body: str
) -> tuple[Message, bool]:
    """Store a message durably and deliver it to every member's stream.

    The message is committed before this returns. When every member's shard
    shares the conversation's database (the usual case), the members' events are
    written in the same transaction; otherwise the fan-out is queued in the outbox
    in that transaction and run after the commit (a failure there is finished by
    the sweeper). A retry with the same client_msg_id returns the stored message
    and False; nothing is written twice and no second event is produced.

    Raises:
        NotFound: no such conversation, or the sender is not a member.
        Forbidden: a direct conversation whose other member blocked the sender.
    """
    blocks.require_can_send(sender_id, conversation_id)
    router = runtime.get().router
    with router.on_conversation(
        conversation_id, "send_message", transaction=False
    ) as cur:
        try:
            # Two round trips: store the message; then write its fan-out (or
            # queue it) and commit.
            with pipelined_transaction(cur) as tx:
                stored = store.store(
                    tx, conversation_id, sender_id, client_msg_id, body
                )
                if stored is None:
                    raise NotFound("No such conversation.")
                plan = None
                event_ids: dict[int, int] = {}
                if not stored.has_queued_fanout:
                    plan = fanout.plan_inline(
                        router.shard_map, conversation_id, stored.recipients
                    )
                if plan is None:
                    store.queue_fanout_and_commit(tx, stored)
                else:
                    event_ids = fanout.write_inline_and_commit(tx, stored.message, plan)
        except store.DuplicateClientMsgId:
            existing = store.existing(cur, conversation_id, sender_id, client_msg_id)
            if existing is None:  # pragma: no cover - the unique key says it exists
                raise
            return existing, False
    if plan is None:
        fanout.fan_out_quietly(conversation_id)
    else:
        fanout.after_commit(stored.message, stored.recipients, event_ids)
    return stored.message, True


def history(
    user_id: int,
    conversation_id: int,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
) -> tuple[list[Message], int | None, int | None]:
    """A page of messages in ascending seq, with next_before and next_after.

    Seqs have no gaps, so older messages exist exactly when the page's lowest seq
    is above 1, and newer ones when its highest is below last_seq.

    Raises:
        NotFound: no such conversation, or the caller is not a member.
    """
    with runtime.get().router.on_conversation(
        conversation_id, "history", transaction=False
    ) as cur:
        found = store.page(
            cur, conversation_id, user_id, limit=limit, before=before, after=after
        )
    if found is None:
        raise NotFound("No such conversation.")
    page = found.messages
    if not page:
        return [], None, None
    next_before = page[0].seq if page[0].seq > 1 else None
    next_after = page[-1].seq if page[-1].seq < found.last_seq else None
    return page, next_before, next_after
