"""views: the JSON of the value objects equals what the schemas declare."""

import ast
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from messenger.models import Conversation, Member, Message
from messenger.schemas.conversations import ConversationOut
from messenger.schemas.messages import MessageOut
from messenger.views import conversation_json, format_time, message_json

AT = datetime(2026, 11, 26, 21, 47, 42, 123456, tzinfo=UTC)
MESSAGE = Message(42, 7, 17, "c-101", "Are you coming?", AT)
SERVICES = Path(__file__).resolve().parent.parent / "messenger" / "services"


def test_format_time_is_utc_with_milliseconds() -> None:
    assert format_time(AT) == "2026-11-26T21:47:42.123Z"
    paris = AT.astimezone(timezone(timedelta(hours=1)))
    assert format_time(paris) == "2026-11-26T21:47:42.123Z"


def test_message_json_is_the_message_schema() -> None:
    assert message_json(MESSAGE) == MessageOut().dump(MESSAGE)


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
