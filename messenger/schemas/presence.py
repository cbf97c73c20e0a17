"""GET /v1/presence: the query and the answer."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields

from messenger.schemas.base import BIGINT_MAX, QuerySchema

# One conversation list's worth of peers; more in one call is a client bug.
PRESENCE_MAX_IDS = 200
# What clients send: 1 to PRESENCE_MAX_IDS ids, comma-separated. IdList also
# forgives spaces, empty parts and repeats, so everything this matches is
# accepted (tests/api/test_openapi.py checks it); the document publishes it.
USER_IDS_PATTERN = (
    rf"^[1-9][0-9]{{0,17}}(,[1-9][0-9]{{0,17}}){{0,{PRESENCE_MAX_IDS - 1}}}$"
)


class IdList(fields.Field):
    """Comma-separated ids ("1,2,3") → [1, 2, 3]; 1 to PRESENCE_MAX_IDS of them."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[int]:
        if not isinstance(value, str):
            raise ValidationError("Comma-separated user ids.")
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            raise ValidationError("At least one user id.")
        if len(parts) > PRESENCE_MAX_IDS:
            raise ValidationError(f"At most {PRESENCE_MAX_IDS} user ids.")
        ids = []
        for part in parts:
            if not part.isascii() or not part.isdigit() or len(part) > 19:
                raise ValidationError(f"Not a user id: {part[:20]!r}.")
            user_id = int(part)
            if not 1 <= user_id <= BIGINT_MAX:
                raise ValidationError(f"Not a user id: {part[:20]!r}.")
            ids.append(user_id)
        return list(dict.fromkeys(ids))


class PresenceQuery(QuerySchema):
    user_ids = IdList(
        required=True,
        metadata={
            "description": "Comma-separated user ids, e.g. 1,2,3.",
            "pattern": USER_IDS_PATTERN,
        },
    )


def presence_json(found: dict[int, tuple[str, str | None]]) -> dict[str, Any]:
    """{"<user id>": {"status", "last_seen"}} as API.md shows it."""
    return {
        str(user_id): {"status": status, "last_seen": last_seen}
        for user_id, (status, last_seen) in found.items()
    }
