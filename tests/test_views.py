"""views: the JSON of the value objects equals what the schemas declare."""

import ast
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from messenger.models import Attachment, Conversation, Member, Message
from messenger.schemas.conversations import ConversationOut
from messenger.schemas.messages import AttachmentOut, MessageOut
from messenger.storage.messages import attachment_from_json
from messenger.views import (
    attachment_json,
    conversation_json,
    format_time,
    message_json,
)

AT = datetime(2026, 11, 26, 21, 47, 42, 123456, tzinfo=UTC)
MESSAGE = Message(42, 7, 17, "c-101", "Are you coming?", AT)
SERVICES = Path(__file__).resolve().parent.parent / "messenger" / "services"


def test_format_time_is_utc_with_milliseconds() -> None:
    assert format_time(AT) == "2026-11-26T21:47:42.123Z"
    paris = AT.astimezone(timezone(timedelta(hours=1)))
    assert format_time(paris) == "2026-11-26T21:47:42.123Z"


PHOTO = Attachment(90, 17, "image/png", 2048, "cat.png", "ab" * 32, 640, 480, AT)
FILE = Attachment(91, 17, "application/pdf", 10, "a.pdf", "cd" * 32, None, None, AT)
FULL_MESSAGE = Message(
    42,
    8,
    17,
    "c-102",
    "",
    AT,
    reply_to=7,
    edited_at=AT + timedelta(minutes=3),
    reactions={"👍": [17, 18], "🎉": [19]},
    attachments=(PHOTO, FILE),
)


@pytest.mark.parametrize("message", [MESSAGE, FULL_MESSAGE])
def test_message_json_is_the_message_schema(message: Message) -> None:
    assert message_json(message) == MessageOut().dump(message)


def test_attachment_json_is_the_schema_and_reads_back() -> None:
    for attachment in (PHOTO, FILE):
        assert attachment_json(attachment) == AttachmentOut().dump(attachment)
        # The stored form in a message's attachments column reads back (to the ms).
        again = attachment_from_json(attachment_json(attachment), 17)
        assert attachment_json(again) == attachment_json(attachment)


@pytest.mark.parametrize(
    "conv",
    [
        Conversation(
            42,
            "group",
            "Cake",
            17,
            AT,
            7,
            members=(Member(17, "owner", 7, 7, AT), Member(18, "member", 3, 5)),
            last_message=MESSAGE,
            read_seq=7,
        ),
        Conversation(43, "direct", None, None, AT, 0, unread_count=0),
    ],
    ids=["group", "direct"],
)
def test_conversation_json_is_the_conversation_schema(conv: Conversation) -> None:
    assert conversation_json(conv) == ConversationOut().dump(conv)


def test_services_import_nothing_of_the_http_layer() -> None:
    found = []
    for path in sorted(SERVICES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] == "flask" or name.startswith(
                    ("messenger.schemas", "messenger.api")
                ):
                    found.append(f"{path.name}: {name}")
    assert not found
