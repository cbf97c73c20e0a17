"""Value objects passed between layers (services return these; schemas dump them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class User:
    user_id: int
    handle: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True)
class Attachment:
    """An uploaded file's metadata; its bytes are in the blob store under sha256."""

    attachment_id: int
    uploader_id: int
    content_type: str
    size: int
    filename: str
    sha256: str
    width: int | None
    height: int | None
    created_at: datetime

    @property
    def is_image(self) -> bool:
        """A raster image whose bytes decoded (it has dimensions)."""
        return self.width is not None


@dataclass(frozen=True)
class Message:
    """A message as it is now. A deleted one is a tombstone: body "", reply_to
    None, no reactions, no attachments."""

    conversation_id: int
    seq: int
    sender_id: int
    client_msg_id: str
    body: str
    created_at: datetime
    reply_to: int | None = None
    edited_at: datetime | None = None
    deleted: bool = False
    # emoji → the ids of the members who reacted with it, ascending.
    reactions: dict[str, list[int]] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Member:
    user_id: int
    role: str
    read_seq: int
    delivered_seq: int
    joined_at: datetime | None = None


@dataclass(frozen=True)
class Conversation:
    conversation_id: int
    kind: str
    title: str | None
    owner_id: int | None
    created_at: datetime
    last_seq: int
    members: tuple[Member, ...] = ()
    last_message: Message | None = None
    read_seq: int = 0
    unread_count: int = 0
    # The viewer's own settings (API.md "Per-member conversation settings").
    request: bool = False
    muted_until: MutedUntil = None
    archived: bool = False


# None (not muted), a time, or "forever".
MutedUntil = datetime | str | None


@dataclass(frozen=True)
class MemberSettings:
    """A member's own view of a conversation (its list row, member's shard)."""

    request: bool = False
    muted_until: MutedUntil = None
    archived: bool = False


@dataclass(frozen=True)
class Event:
    """A stored event of a user's stream. Ephemeral events (presence, typing) are
    never stored and never Events: they travel as the dicts API.md shows.

    `fields` holds the event's top-level fields of API.md other than id and type:
    {"message": Message} for a message event, the stored JSON payload otherwise.
    """

    type: str
    event_id: int
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Device:
    """A push target of a user. `secret` keys the HMAC signature of its pushes;
    API answers show it only when the device is registered."""

    device_id: int
    user_id: int
    kind: str
    url: str
    secret: str
    created_at: datetime
