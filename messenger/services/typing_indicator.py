"""Typing indicators: ephemeral, straight to the other members' waiting polls.

Never stored: a member with no poll waiting at that moment simply misses it, which
is what a typing indicator wants. The route counts each call against the "typing"
rate limit (MESSENGER_RATE_LIMITS, services/ratelimit.py).
"""

from __future__ import annotations

from messenger import runtime
from messenger.errors import NotFound
from messenger.services import blocks
from messenger.storage import conversations as conversation_store


def announce(user_id: int, conversation_id: int) -> None:
    """Send `typing` to the other members' waiting polls (not to the caller's).

    Redis trouble only narrows the delivery to polls held by this worker.

    Raises:
        NotFound: no such conversation, or the caller is not a member.
    """
    rt = runtime.get()
    with rt.router.on_conversation(
        conversation_id, "typing_members", transaction=False
    ) as cur:
        member_ids = conversation_store.member_ids(cur, conversation_id)
    if user_id not in member_ids:
        raise NotFound("No such conversation.")
    others = [m for m in member_ids if m != user_id]
    # API.md: a user the typist blocked gets none of its typing events.
    hidden = blocks.blocked_among(user_id, others)
    rt.waker.wake_users(
        [m for m in others if m not in hidden],
        ephemeral={
            "type": "typing",
            "conversation_id": conversation_id,
            "user_id": user_id,
        },
    )
