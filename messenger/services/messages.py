"""Sending (idempotent, durable before acknowledged) and reading history."""

from __future__ import annotations

import logging
from collections.abc import Callable

from messenger import runtime
from messenger.errors import Conflict, Forbidden, NotFound, ValidationFailed
from messenger.models import Attachment, Message
from messenger.services import attachments as attachment_service
from messenger.services import blocks, fanout
from messenger.storage import events as event_store
from messenger.storage import messages as store
from messenger.storage.pools import ShardCursor
from messenger.storage.transaction import pipelined_transaction
from messenger.views import message_json

logger = logging.getLogger(__name__)


def send(
    sender_id: int,
    conversation_id: int,
    *,
    client_msg_id: str,
    body: str = "",
    reply_to: int | None = None,
    attachment_ids: list[int] | None = None,
) -> tuple[Message, bool]:
    """Store a message durably and deliver it to every member's stream.

    With `reply_to` or attachments, one read comes first: a retry is answered
    from it (the message as it is now), the reply_to seq is checked against the
    conversation's last_seq (which only grows, so the check holds at the send),
    and the attachments are checked to be the sender's and linked to the
    conversation.

    The message is committed before this returns. When every member's shard
    shares the conversation's database (the usual case), the members' events are
    written in the same transaction; otherwise the fan-out is queued in the outbox
    in that transaction and run after the commit (a failure there is finished by
    the sweeper). A retry with the same client_msg_id returns the stored message
    and False; nothing is written twice and no second event is produced.

    Raises:
        NotFound: no such conversation, or the sender is not a member.
        Forbidden: a direct conversation whose other member blocked the sender.
        ValidationFailed: reply_to beyond the last message, or an attachment
            that is not the sender's.
    """
    blocks.require_can_send(sender_id, conversation_id)
    router = runtime.get().router
    attachments: list[Attachment] = []
    if reply_to is not None or attachment_ids:
        with router.on_conversation(
            conversation_id, "send_checks", transaction=False
        ) as cur:
            last_seq = store.last_seq_for_member(cur, conversation_id, sender_id)
            earlier = store.existing(cur, conversation_id, sender_id, client_msg_id)
        if last_seq is None:
            raise NotFound("No such conversation.")
        if earlier is not None:
            return earlier, False
        if reply_to is not None and reply_to > last_seq:
            raise ValidationFailed(
                "The request is not valid.",
                fields={
                    "reply_to": [
                        f"No message with this seq here (the last is {last_seq})."
                    ]
                },
            )
        if attachment_ids:
            attachments = attachment_service.for_send(
                sender_id, conversation_id, attachment_ids
            )
    with router.on_conversation(
        conversation_id, "send_message", transaction=False
    ) as cur:
        try:
            # Two round trips: store the message; then write its fan-out (or
            # queue it) and commit.
            with pipelined_transaction(cur) as tx:
                stored = store.store(
                    tx,
                    conversation_id,
                    sender_id,
                    client_msg_id,
                    body,
                    reply_to,
                    attachments,
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
        fanout.start_fan_out(conversation_id)
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


# ---- edits, deletes, reactions ------------------------------------------------
# Each is one transaction on the conversation's shard that locks the conversation
# (ordering it with sends and membership changes) and the message, changes it,
# and queues one `message_updated` event to the members at that moment, actor
# included, in the outbox; the fan-out also brings every member's mailbox copy
# up to date (search). A request that changes nothing queues nothing.

Change = Callable[[ShardCursor, store.LockedMessage, Message], Message | None]


def _change(
    actor_id: int, conversation_id: int, seq: int, name: str, change: Change
) -> tuple[Message, bool]:
    """Run `change` on a locked message of a conversation the actor is in;
    (the message after it, whether it changed)."""
    with runtime.get().router.on_conversation(conversation_id, name) as cur:
        locked = store.lock_message(cur, conversation_id, seq)
        if locked is None or actor_id not in locked.member_ids:
            raise NotFound("No such conversation.")
        if locked.message is None:
            raise NotFound("No such message.")
        changed = change(cur, locked, locked.message)
        if changed is not None:
            event_store.insert_outbox(
                cur,
                conversation_id,
                "message_updated",
                locked.member_ids,
                {"event": {"message": message_json(changed)}},
            )
    if changed is None:
        return locked.message, False
    fanout.start_fan_out(conversation_id)
    return changed, True


def edit(actor_id: int, conversation_id: int, seq: int, body: str) -> Message:
    """Replace a message's body (its sender only); sets edited_at.

    The same body again changes nothing.

    Raises:
        NotFound: no such conversation or seq, or the actor is not a member.
        Forbidden: the actor did not send it.
        Conflict: it is deleted.
        ValidationFailed: an empty body on a message without attachments.
    """

    def change(
        cur: ShardCursor, locked: store.LockedMessage, message: Message
    ) -> Message | None:
        if message.sender_id != actor_id:
            raise Forbidden("Only its sender can edit a message.")
        if message.deleted:
            raise Conflict("The message is deleted.")
        if not body and not message.attachments:
            raise ValidationFailed(
                "The request is not valid.",
                fields={"body": ["Empty, on a message without attachments."]},
            )
        if body == message.body:
            return None
        return store.edit(cur, conversation_id, seq, body)

    return _change(actor_id, conversation_id, seq, "edit_message", change)[0]


def delete(actor_id: int, conversation_id: int, seq: int) -> bool:
    """Make a message a tombstone (its sender, or the owner of a group); its seq
    stays. Returns whether it changed (deleting again changes nothing).

    Raises:
        NotFound: no such conversation or seq, or the actor is not a member.
        Forbidden: anyone else.
    """

    def change(
        cur: ShardCursor, locked: store.LockedMessage, message: Message
    ) -> Message | None:
        is_owner = locked.kind == "group" and locked.owner_id == actor_id
        if message.sender_id != actor_id and not is_owner:
            raise Forbidden("Only its sender or the group's owner can delete it.")
        if message.deleted:
            return None
        return store.tombstone(cur, conversation_id, seq)

    return _change(actor_id, conversation_id, seq, "delete_message", change)[1]


def react(actor_id: int, conversation_id: int, seq: int, emoji: str | None) -> Message:
    """Set (emoji) or remove (None) the actor's one reaction on a message.

    Raises:
        NotFound: no such conversation or seq, or the actor is not a member.
        Conflict: setting a reaction on a deleted message.
    """

    def change(
        cur: ShardCursor, locked: store.LockedMessage, message: Message
    ) -> Message | None:
        if message.deleted:
            if emoji is None:
                return None  # a tombstone has no reactions to remove
            raise Conflict("The message is deleted.")
        return store.set_reaction(cur, conversation_id, seq, actor_id, emoji)

    return _change(actor_id, conversation_id, seq, "react", change)[0]
