"""Direct conversations (one per pair), groups, and what members may see.

Non-members get NotFound for everything about a conversation: its existence is not
revealed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime

from messenger import runtime
from messenger.errors import NotFound, ValidationFailed
from messenger.models import Conversation, Member, Message
from messenger.services import accounts, cursors, fanout
from messenger.storage import conversations as store
from messenger.storage import events as event_store
from messenger.storage import users as user_store
from messenger.views import conversation_json

logger = logging.getLogger(__name__)

# API.md: a group has at most 500 members (schemas publish it, create_group and
# groups.add_member enforce it).
GROUP_MAX_MEMBERS = 500

_CLAIM_PAIR = """
INSERT INTO {s}.direct_pairs (user_lo, user_hi, conversation_id) VALUES (%s, %s, %s)
ON CONFLICT DO NOTHING RETURNING conversation_id
"""
_FIND_PAIR = """
SELECT conversation_id FROM {s}.direct_pairs WHERE user_lo = %s AND user_hi = %s
"""


def _conversation(
    row: store.ConversationRow,
    members: list[Member],
    viewer_id: int | None,
    last_message: Message | None,
) -> Conversation:
    conversation_id, kind, title, owner_id, created_at, last_seq = row
    read_seq = next((m.read_seq for m in members if m.user_id == viewer_id), 0)
    return Conversation(
        conversation_id=conversation_id,
        kind=kind,
        title=title,
        owner_id=owner_id,
        created_at=created_at,
        last_seq=last_seq,
        members=tuple(members),
        last_message=last_message,
        read_seq=read_seq,
        unread_count=max(0, last_seq - read_seq),
    )


def _create(
    conversation_id: int,
    kind: str,
    title: str | None,
    owner_id: int | None,
    member_ids: list[int],
) -> Conversation:
    """Create the conversation on its shard (idempotent) and announce it."""
    router = runtime.get().router
    with router.on_conversation(conversation_id, "create_conversation") as cur:
        created = store.insert(cur, conversation_id, kind, title, owner_id)
        store.insert_members(cur, conversation_id, member_ids, owner_id)
        row = store.get(cur, conversation_id)
        members = store.members_of(cur, [conversation_id])[conversation_id]
        assert row is not None
        conv = _conversation(row, members, None, None)
        if created:
            # The new conversation enters every member's list and stream.
            event_store.insert_outbox(
                cur,
                conversation_id,
                "conversation_updated",
                member_ids,
                {
                    "event": {"conversation": conversation_json(conv)},
                    "join": member_ids,
                },
            )
    if created:
        fanout.fan_out_quietly(conversation_id)
    return conv


def get_or_create_direct(user_id: int, peer_id: int) -> tuple[Conversation, bool]:
    """The one direct conversation of a pair; True when this call created it.

    Safe under concurrent calls: the directory's (user_lo, user_hi) key decides
    which conversation id wins; creating it on its shard is idempotent, so a crash
    between the two steps heals on the next call.
    """
    if peer_id == user_id:
        raise ValidationFailed(
            "The request is not valid.",
            fields={"user_id": ["A direct conversation needs another user."]},
        )
    if peer_id not in accounts.existing_ids([peer_id]):
        raise ValidationFailed(
            "The request is not valid.", fields={"user_id": ["No such user."]}
        )
    lo, hi = sorted((user_id, peer_id))
    router = runtime.get().router
    with router.directory("find_direct", transaction=False) as cur:
        row = cur.run(_FIND_PAIR, (lo, hi)).fetchone()
    created = False
    if row is None:
        with router.directory("claim_direct") as cur:
            new_id = user_store.next_id(cur)
            claimed = cur.run(_CLAIM_PAIR, (lo, hi, new_id)).fetchone()
            if claimed is None:
                row = cur.run(_FIND_PAIR, (lo, hi)).fetchone()
            else:
                row, created = claimed, True
    assert row is not None  # claimed, or found after losing the race to claim
    conversation_id = int(row[0])
    conv = _create(conversation_id, "direct", None, None, [lo, hi])
    return get(user_id, conv.conversation_id), created


def create_group(owner_id: int, title: str, member_ids: list[int]) -> Conversation:
    """A group with its creator as owner and member.

    Raises:
        ValidationFailed: unknown member ids, or more than 500 members.
    """
    members = list(dict.fromkeys([owner_id, *member_ids]))
    if len(members) > GROUP_MAX_MEMBERS:
        raise ValidationFailed(
            "The request is not valid.",
            fields={
                "member_ids": [f"A group has at most {GROUP_MAX_MEMBERS} members."]
            },
        )
    unknown = sorted(set(members) - accounts.existing_ids(members))
    if unknown:
        raise ValidationFailed(
            "The request is not valid.",
            fields={"member_ids": [f"No such users: {', '.join(map(str, unknown))}."]},
        )
    router = runtime.get().router
    with router.directory("allocate_conversation_id", transaction=False) as cur:
        conversation_id = user_store.next_id(cur)
    _create(conversation_id, "group", title, owner_id, members)
    return get(owner_id, conversation_id)


def get(user_id: int, conversation_id: int) -> Conversation:
    """A conversation with members, as its member user_id sees it.

    Raises:
        NotFound: no such conversation, or user_id is not a member.
    """
    router = runtime.get().router
    with router.on_conversation(
        conversation_id, "get_conversation", transaction=False
    ) as cur:
        row = store.get_for_member(cur, conversation_id, user_id)
        if row is None:
            raise NotFound("No such conversation.")
        members = store.members_of(cur, [conversation_id])[conversation_id]
        last = store.last_message(cur, conversation_id, row[5])
    last_message = (
        Message(conversation_id, last[0], last[1], last[2], last[3], last[4])
        if last
        else None
    )
    return _conversation(row, members, user_id, last_message)


def require_member(user_id: int, conversation_id: int) -> None:
    """Raises NotFound unless user_id is a member."""
    with runtime.get().router.on_conversation(
        conversation_id, "is_member", transaction=False
    ) as cur:
        if not store.is_member(cur, conversation_id, user_id):
            raise NotFound("No such conversation.")


def encode_list_cursor(at: datetime, conversation_id: int) -> str:
    return cursors.encode(at, conversation_id)


def decode_list_cursor(cursor: str) -> tuple[datetime, int]:
    at, (conversation_id,) = cursors.decode(cursor, 1)
    return at, conversation_id


def list_for(
    user_id: int, limit: int, before: str | None
) -> tuple[list[Conversation], str | None]:
    """The user's conversations, most recent activity first, and the next cursor."""
    router = runtime.get().router
    position = decode_list_cursor(before) if before else None
    with router.on_user(user_id, "list_conversations", transaction=False) as cur:
        rows = store.list_for_user(cur, user_id, limit + 1, position)
    has_more = len(rows) > limit
    rows = rows[:limit]
    wanted: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        c = row[0]
        wanted[router.dsn_of(c)][router.schema_of(c)].append(c)
    details: dict[int, store.ConversationRow] = {}
    members: dict[int, list[Member]] = {}
    for dsn, by_schema in wanted.items():
        with router.on_dsn(dsn, "list_conversation_details", transaction=False) as cur:
            found, found_members = store.rows_across(cur, by_schema)
        details.update((r[0], r) for r in found)
        members.update(found_members)
    result = []
    for c, _at, _last_seq, sender_id, cmid, body, msg_at in rows:
        if c not in details:
            continue  # deleted meanwhile; its leave event is on the way
        last_message = None
        if sender_id is not None:
            last_message = Message(c, _last_seq, sender_id, cmid, body, msg_at)
        result.append(
            _conversation(details[c], members.get(c, []), user_id, last_message)
        )
    next_cursor = encode_list_cursor(rows[-1][1], rows[-1][0]) if has_more else None
    return result, next_cursor
