"""Group management: rename, add and remove members, leave, delete.

Each change is one transaction on the conversation's shard that changes the
members or the conversation AND queues its events in the outbox, with the
recipients read after the conversation row lock: the members at that moment. The
fan-out then delivers the events in outbox order, so a removed user receives its
`member_removed` event and nothing of that conversation after it.

Permissions (API.md, plus what API.md leaves open):
- a non-member gets NotFound for everything (the conversation is not revealed);
- direct conversations have no title, owner or member list to change: Forbidden;
- rename and add: any member; remove someone else and delete: the owner only;
- adding a member already there is a Conflict (409), like a taken handle.
"""

from __future__ import annotations

import logging
from typing import Any

from messenger import runtime
from messenger.errors import Conflict, Forbidden, NotFound, ValidationFailed
from messenger.models import Conversation, Member
from messenger.services import accounts, blocks, conversations, fanout
from messenger.services.conversations import GROUP_MAX_MEMBERS
from messenger.storage import conversations as conversation_store
from messenger.storage import events as event_store
from messenger.storage import groups as store
from messenger.storage.pools import ShardCursor
from messenger.views import conversation_json

logger = logging.getLogger(__name__)


def _locked_group(
    cur: ShardCursor, conversation_id: int, actor_id: int
) -> tuple[conversation_store.ConversationRecord, list[Member]]:
    """Lock a group the actor belongs to; returns its record and members.

    Raises:
        NotFound: no such conversation, or the actor is not a member.
        Forbidden: it is a direct conversation.
    """
    group = store.lock(cur, conversation_id)
    members = (
        conversation_store.members_of(cur, [conversation_id])[conversation_id]
        if group
        else []
    )
    if group is None or all(m.user_id != actor_id for m in members):
        raise NotFound("No such conversation.")
    if group.kind != "group":
        raise Forbidden("A direct conversation cannot be changed.")
    return group, members


def _snapshot(cur: ShardCursor, conversation_id: int, viewer_id: int) -> Conversation:
    """The conversation as viewer_id sees it, read inside the change's transaction."""
    record = conversation_store.get(cur, conversation_id)
    assert record is not None
    members = conversation_store.members_of(cur, [conversation_id])[conversation_id]
    last = conversation_store.last_message(cur, conversation_id, record.last_seq)
    # The same builder as conversations.get, so a snapshot in an event is the
    # Conversation a GET returns.
    return conversations.assemble(record, members, viewer_id, last)


def _queue(
    cur: ShardCursor,
    conversation_id: int,
    kind: str,
    recipients: list[int],
    event: dict[str, Any],
    *,
    join: list[int] | None = None,
    request: list[int] | None = None,
    leave: list[int] | None = None,
) -> None:
    payload: dict[str, Any] = {"event": event}
    if join:
        payload["join"] = join
    if request:
        payload["request"] = request
    if leave:
        payload["leave"] = leave
    event_store.insert_outbox(cur, conversation_id, kind, recipients, payload)


def rename(actor_id: int, conversation_id: int, title: str) -> Conversation:
    """Set a group's title (any member); `conversation_updated` to the members.

    The same title again changes nothing and sends no event.

    Raises:
        NotFound: no such conversation, or the actor is not a member.
        Forbidden: a direct conversation.
    """
    router = runtime.get().router
    changed = False
    with router.on_conversation(conversation_id, "rename_group") as cur:
        group, members = _locked_group(cur, conversation_id, actor_id)
        if group.title != title:
            store.rename(cur, conversation_id, title)
            snapshot = conversation_json(_snapshot(cur, conversation_id, actor_id))
            # Only what changed: the member list (up to 500 entries, stored in
            # every member's stream) did not, and is left out (API.md's
            # Conversation "with members" is the GET's).
            del snapshot["members"]
            _queue(
                cur,
                conversation_id,
                "conversation_updated",
                [m.user_id for m in members],
                {"conversation": snapshot},
            )
            changed = True
    if changed:
        fanout.start_fan_out(conversation_id)
    return conversations.get(actor_id, conversation_id)


def add_member(actor_id: int, conversation_id: int, user_id: int) -> Conversation:
    """Add a user to a group (any member may); returns the group as the actor sees it.

    `member_added` goes to every member, the new one included; the group enters
    the new member's list.

    Raises:
        NotFound: no such conversation, or the actor is not a member.
        Forbidden: a direct conversation.
        Conflict: the user is a member already (nothing changes).
        ValidationFailed: no such user, or the group is full (500 members).
    """
    if user_id not in accounts.existing_ids([user_id]):
        raise ValidationFailed(
            "The request is not valid.", fields={"user_id": ["No such user."]}
        )
    blocks.require_not_blocked(actor_id, [user_id])
    router = runtime.get().router
    with router.on_conversation(conversation_id, "add_member") as cur:
        group, members = _locked_group(cur, conversation_id, actor_id)
        if any(m.user_id == user_id for m in members):
            raise Conflict("That user is a member already.")
        if len(members) >= GROUP_MAX_MEMBERS:
            raise ValidationFailed(
                "The request is not valid.",
                fields={
                    "user_id": [f"A group has at most {GROUP_MAX_MEMBERS} members."]
                },
            )
        store.add_member(cur, conversation_id, user_id, group.last_seq)
        _queue(
            cur,
            conversation_id,
            "member_added",
            [*(m.user_id for m in members), user_id],
            {"conversation_id": conversation_id, "user_id": user_id, "by": actor_id},
            join=[user_id],
            request=[user_id],
        )
    logger.info(
        "conversation %s: user %s added by %s", conversation_id, user_id, actor_id
    )
    fanout.start_fan_out(conversation_id)
    return conversations.get(actor_id, conversation_id)


def remove_member(actor_id: int, conversation_id: int, user_id: int) -> None:
    """Remove a member (the owner may), or leave (anyone, user_id = actor).

    `member_removed` goes to the members before the change, the removed user
    included, once; the group leaves that user's list, and it loses access at
    once. When the owner leaves, the longest-standing member becomes the owner
    (a `conversation_updated` event follows). When the last member leaves, the
    group is deleted.

    Raises:
        NotFound: no such conversation, the actor is not a member, or user_id is
            not a member.
        Forbidden: a direct conversation, or a non-owner removing someone else.
    """
    router = runtime.get().router
    with router.on_conversation(conversation_id, "remove_member") as cur:
        group, members = _locked_group(cur, conversation_id, actor_id)
        owner_id = group.owner_id
        if user_id != actor_id and actor_id != owner_id:
            raise Forbidden("Only the group's owner can remove other members.")
        if all(m.user_id != user_id for m in members):
            raise NotFound("No such member.")
        store.remove_member(cur, conversation_id, user_id)
        _queue(
            cur,
            conversation_id,
            "member_removed",
            [m.user_id for m in members],
            {"conversation_id": conversation_id, "user_id": user_id, "by": actor_id},
            leave=[user_id],
        )
        # members_of orders by joined_at: the first one left stood longest.
        remaining = [m.user_id for m in members if m.user_id != user_id]
        if not remaining:
            store.delete(cur, conversation_id)
        elif user_id == owner_id:
            store.set_owner(cur, conversation_id, remaining[0])
            snapshot = _snapshot(cur, conversation_id, remaining[0])
            _queue(
                cur,
                conversation_id,
                "conversation_updated",
                remaining,
                {"conversation": conversation_json(snapshot)},
            )
    logger.info(
        "conversation %s: user %s removed by %s", conversation_id, user_id, actor_id
    )
    fanout.start_fan_out(conversation_id)


def delete(actor_id: int, conversation_id: int) -> None:
    """Delete a group (its owner only): `conversation_deleted` to every member.

    Afterwards the conversation is NotFound for everyone; its messages are gone.
    Messages still being fanned out are delivered first where possible.

    Raises:
        NotFound: no such conversation, or the actor is not a member.
        Forbidden: a direct conversation, or the actor is not the owner.
    """
    router = runtime.get().router
    # Finish deliveries in flight first, so messages acknowledged just before
    # the deletion reach the members before the conversation_deleted event.
    fanout.start_fan_out(conversation_id)
    with router.on_conversation(conversation_id, "delete_group") as cur:
        group, members = _locked_group(cur, conversation_id, actor_id)
        if group.owner_id != actor_id:
            raise Forbidden("Only the group's owner can delete it.")
        everyone = [m.user_id for m in members]
        store.delete(cur, conversation_id)
        _queue(
            cur,
            conversation_id,
            "conversation_deleted",
            everyone,
            {"conversation_id": conversation_id},
            leave=everyone,
        )
    logger.info("conversation %s: deleted by %s", conversation_id, actor_id)
    fanout.start_fan_out(conversation_id)
