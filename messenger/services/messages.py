"""Sending (idempotent, durable before acknowledged) and reading history."""

from __future__ import annotations

import logging

from messenger import runtime
from messenger.errors import NotFound
from messenger.models import Message
from messenger.services import fanout
from messenger.storage import messages as store

logger = logging.getLogger(__name__)


def send(
    sender_id: int, conversation_id: int, *, client_msg_id: str, body: str
) -> tuple[Message, bool]:
    """Store a message durably, then fan it out to every member's stream.

    The message is committed (with its outbox row) before this returns, whatever
    happens to the fan-out afterwards: a failed fan-out is finished by the sweeper.
    A retry with the same client_msg_id returns the stored message and False;
    nothing is written twice and no second event is produced.

    Raises:
        NotFound: no such conversation, or the sender is not a member.
    """
    router = runtime.get().router
    with router.on_conversation(
        conversation_id, "send_message", transaction=False
    ) as cur:
        try:
            stored = store.insert(cur, conversation_id, sender_id, client_msg_id, body)
        except store.DuplicateClientMsgId:
            existing = store.existing(cur, conversation_id, sender_id, client_msg_id)
            if existing is None:  # pragma: no cover - the unique key says it exists
                raise
            return existing, False
    if stored is None:
        raise NotFound("No such conversation.")
    seq, created_at = stored
    fanout.fan_out_quietly(conversation_id)
    return Message(
        conversation_id, seq, sender_id, client_msg_id, body, created_at
    ), True


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
    last_seq, page = found
    if not page:
        return [], None, None
    next_before = page[0].seq if page[0].seq > 1 else None
    next_after = page[-1].seq if page[-1].seq < last_seq else None
    return page, next_before, next_after
