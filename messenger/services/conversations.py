"""Direct conversations (one per pair), groups, and what members may see.

Non-members get NotFound for everything about a conversation: its existence is not
revealed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime

from messenger import runtime
from messenger.errors import NotFound, ValidationFailed
from messenger.models import Conversation, Member, MemberSettings, Message, MutedUntil
from messenger.services import accounts, blocks, cursors, fanout, presence
from messenger.storage import conversations as store
from messenger.storage import events as event_store
from messenger.storage import users as user_store
from messenger.views import conversation_json, muted_json

logger = logging.getLogger(__name__)

# API.md: a group has at most 500 members (schemas publish it, create_group and
# groups.add_member enforce it).
GROUP_MAX_MEMBERS = 500


def assemble(
    record: store.ConversationRecord,
    members: list[Member],
    viewer_id: int | None,
    last_message: Message | None,
    settings: MemberSettings | None = None,
) -> Conversation:
    """The Conversation as viewer_id sees it (its read position, its unread count,
    its own settings); every answer and event showing a conversation is built
    here. Events get each recipient's settings stamped in as they are stored."""
    own = settings or MemberSettings()
    read_seq = next((m.read_seq for m in members if m.user_id == viewer_id), 0)
    return Conversation(
        conversation_id=record.conversation_id,
        kind=record.kind,
        title=record.title,
        owner_id=record.owner_id,
        created_at=record.created_at,
        last_seq=record.last_seq,
        members=tuple(members),
        last_message=last_message,
        read_seq=read_seq,
        unread_count=max(0, record.last_seq - read_seq),
        request=own.request,
        muted_until=own.muted_until,
        archived=own.archived,
    )


def _create(
    conversation_id: int,
    kind: str,
    title: str | None,
    owner_id: int | None,
    member_ids: list[int],
    requests: list[int],
) -> Conversation:
    """Create the conversation on its shard (idempotent) and announce it; the
    members in `requests` get it as a message request."""
    router = runtime.get().router
    with router.on_conversation(conversation_id, "create_conversation") as cur:
        created = store.insert(cur, conversation_id, kind, title, owner_id)
        store.insert_members(cur, conversation_id, member_ids, owner_id)
        record = store.get(cur, conversation_id)
        members = store.members_of(cur, [conversation_id])[conversation_id]
        assert record is not None
        conv = assemble(record, members, None, None)
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
                    "request": requests,
                },
            )
    if created:
        fanout.start_fan_out(conversation_id)
    return conv


def get_or_create_direct(user_id: int, peer_id: int) -> tuple[Conversation, bool]:
    """The one direct conversation of a pair; True when this call created it.

    Finding an existing one reads the shard of the lower user id (where the pair
    is kept) and the conversation's shard, never the directory: a pair exists
    only for two users who exist. Only a new pair draws its conversation id
    from the directory.

    Safe under concurrent calls: the pair's (user_lo, user_hi) key on its shard
    decides which conversation id wins; creating the conversation on its own
    shard is idempotent, so a crash between the two steps heals on the next call.

    Raises:
        ValidationFailed: the peer is the caller, or no such user.
        Forbidden: the peer blocked the caller.
    """
    if peer_id == user_id:
        raise ValidationFailed(
            "The request is not valid.",
            fields={"user_id": ["A direct conversation needs another user."]},
        )
    lo, hi = sorted((user_id, peer_id))
    router = runtime.get().router
    with router.on_user(lo, "find_direct", transaction=False) as cur:
        conversation_id = store.find_direct_pair(cur, lo, hi)
    if conversation_id is None and peer_id not in accounts.existing_ids([peer_id]):
        raise ValidationFailed(
            "The request is not valid.", fields={"user_id": ["No such user."]}
        )
    blocks.require_not_blocked(user_id, [peer_id])
    created = False
    if conversation_id is None:
        with router.directory("allocate_conversation_id", transaction=False) as cur:
            new_id = user_store.next_id(cur)
        with router.on_user(lo, "claim_direct") as cur:
            created = store.claim_direct_pair(cur, lo, hi, new_id)
            conversation_id = new_id if created else store.find_direct_pair(cur, lo, hi)
    assert conversation_id is not None  # claimed, or found after losing the race
    # The peer gets it as a message request (API.md), unless it was the peer
    # who claimed the pair first and this call only heals its creation.
    conv = _create(
        conversation_id, "direct", None, None, [lo, hi], [peer_id] if created else []
    )
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
    blocks.require_not_blocked(owner_id, members)
    router = runtime.get().router
    with router.directory("allocate_conversation_id", transaction=False) as cur:
        conversation_id = user_store.next_id(cur)
    _create(
        conversation_id,
        "group",
        title,
        owner_id,
        members,
        [m for m in members if m != owner_id],
    )
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
        record = store.get_for_member(cur, conversation_id, user_id)
        if record is None:
            raise NotFound("No such conversation.")
        members = store.members_of(cur, [conversation_id])[conversation_id]
        last_message = store.last_message(cur, conversation_id, record.last_seq)
    with router.on_user(user_id, "member_settings", transaction=False) as cur:
        settings = store.settings_of(cur, user_id, conversation_id)
    return assemble(record, members, user_id, last_message, settings)


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


# A page embeds every member of each conversation it lists: 200 groups of 500
# are 100,000 member objects, megabytes of JSON encoded on the worker's event
# loop while every other request of the worker waits. A page stops early (with
# a `next` cursor) rather than embed more than this; one conversation (at most
# 500 members) always fits.
LIST_MEMBERS_MAX = 2_000


def list_for(
    user_id: int,
    limit: int,
    before: str | None,
    *,
    archived: bool = False,
    requests: str | None = None,
) -> tuple[list[Conversation], str | None]:
    """The user's conversations, most recent activity first, and the next cursor.

    Archived ones only with `archived`, else none of them; `requests` "only" or
    "exclude" keeps or leaves out message requests (None: both).
    A page holds fewer than `limit` conversations (and a `next` cursor) when
    they would embed more than LIST_MEMBERS_MAX members in all.
    """
    router = runtime.get().router
    position = decode_list_cursor(before) if before else None
    request = {"only": True, "exclude": False}.get(requests or "")
    with router.on_user(user_id, "list_conversations", transaction=False) as cur:
        entries = store.list_for_user(
            cur, user_id, limit + 1, position, archived=archived, request=request
        )
    has_more = len(entries) > limit
    entries = entries[:limit]
    wanted: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for entry in entries:
        c = entry.conversation_id
        wanted[router.dsn_of(c)][router.schema_of(c)].append(c)
    records: dict[int, store.ConversationRecord] = {}
    members: dict[int, list[Member]] = {}
    for dsn, by_schema in wanted.items():
        with router.on_dsn(dsn, "list_conversation_details", transaction=False) as cur:
            found, found_members = store.rows_across(cur, by_schema)
        records.update((r.conversation_id, r) for r in found)
        members.update(found_members)
    result: list[Conversation] = []
    embedded = 0
    for index, e in enumerate(entries):
        if e.conversation_id not in records:
            continue  # deleted meanwhile: its leave event is on the way
        conv_members = members.get(e.conversation_id, [])
        if result and embedded + len(conv_members) > LIST_MEMBERS_MAX:
            # The page stops early; the next one starts after the last shown.
            entries, has_more = entries[:index], True
            break
        embedded += len(conv_members)
        result.append(
            assemble(
                records[e.conversation_id],
                conv_members,
                user_id,
                e.last_message,
                e.settings,
            )
        )
    next_cursor = None
    if has_more:
        last = entries[-1]
        next_cursor = encode_list_cursor(last.last_activity_at, last.conversation_id)
    return result, next_cursor


def accept(user_id: int, conversation_id: int) -> None:
    """The caller accepts a message request (not one: nothing changes). From then
    on the other members see the caller's presence; those whose polls are held
    are told it at once.

    Raises:
        NotFound: the conversation is not in the caller's list.
    """
    router = runtime.get().router
    with router.on_user(user_id, "accept_request") as cur:
        was_request = store.accept(cur, user_id, conversation_id)
    if was_request is None:
        raise NotFound("No such conversation.")
    if was_request:
        with router.on_conversation(
            conversation_id, "accept_members", transaction=False
        ) as cur:
            member_ids = store.member_ids(cur, conversation_id)
        presence.reveal(user_id, member_ids)


_UNSET = object()


def update_settings(
    user_id: int,
    conversation_id: int,
    *,
    muted_until: MutedUntil | object = _UNSET,
    archived: bool | object = _UNSET,
) -> Conversation:
    """Change the caller's mute and archive settings of a conversation.

    A change is a stored `member_settings` event to the caller alone (its other
    devices), in the same transaction; a request that changes nothing stores
    none. A mute time already past is no mute.

    Raises:
        NotFound: the conversation is not in the caller's list.
    """
    rt = runtime.get()
    changed: MemberSettings | None = None
    with rt.router.on_user(user_id, "update_member_settings") as cur:
        current = store.settings_of(cur, user_id, conversation_id, lock=True)
        if current is None:
            raise NotFound("No such conversation.")
        muted = current.muted_until if muted_until is _UNSET else muted_until
        if isinstance(muted, datetime) and muted <= datetime.now(UTC):
            muted = None
        wanted = MemberSettings(
            current.request,
            muted,  # type: ignore[arg-type]
            current.archived if archived is _UNSET else bool(archived),
        )
        if wanted != current:
            store.set_settings(
                cur, user_id, conversation_id, wanted.muted_until, wanted.archived
            )
            event_store.insert_own_event(
                cur,
                user_id,
                conversation_id,
                "member_settings",
                {
                    "conversation_id": conversation_id,
                    "muted_until": muted_json(wanted.muted_until),
                    "archived": wanted.archived,
                },
            )
            changed = wanted
    if changed is not None:
        rt.waker.wake_users([user_id])
    return get(user_id, conversation_id)
