"""Delivered and read positions: forward only, each change a stored event.

A client marks `delivered` up to the highest seq its poll received, and `read`
when the user has seen the messages; read implies delivered. Each position that
moves queues one `receipt` event for the members (API.md: stored events go to
every member, the actor included, so its other devices follow), and so the
sender sees "delivered" and "read" for its message. A seq at or below the stored
position changes nothing and sends nothing. unread_count derives from read_seq
(last_seq - read_seq), so it is exact at every moment.
"""

from __future__ import annotations

from messenger import runtime
from messenger.errors import NotFound, ValidationFailed
from messenger.services import fanout
from messenger.storage import events as event_store
from messenger.storage import receipts as store

DELIVERED = "delivered"
READ = "read"


def mark(user_id: int, conversation_id: int, receipt: str, seq: int) -> bool:
    """Move the caller's delivered or read position forward to seq.

    Returns whether anything moved.

    Raises:
        NotFound: no such conversation, or the caller is not a member.
        ValidationFailed: seq is beyond the conversation's last message.
    """
    read = receipt == READ
    with runtime.get().router.on_conversation(conversation_id, "receipt") as cur:
        found = store.advance(cur, conversation_id, user_id, read=read, seq=seq)
        if found is None:
            raise NotFound("No such conversation.")
        if seq > found.last_seq:
            raise ValidationFailed(
                "The request is not valid.",
                fields={
                    "seq": [
                        f"Beyond the conversation's last message ({found.last_seq})."
                    ]
                },
            )
        moved = []
        if seq > found.delivered_seq:
            moved.append(DELIVERED)
        if read and seq > found.read_seq:
            moved.append(READ)
        for kind in moved:
            event_store.insert_outbox(
                cur,
                conversation_id,
                "receipt",
                found.member_ids,
                {
                    "event": {
                        "conversation_id": conversation_id,
                        "user_id": user_id,
                        "receipt": kind,
                        "seq": seq,
                    }
                },
            )
    if moved:
        fanout.start_fan_out(conversation_id)
    return bool(moved)
