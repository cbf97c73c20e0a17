"""HTTP edge: parse, authenticate, call one service, serialise."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from messenger.api import (
        attachments,
        blocks,
        conversations,
        devices,
        events,
        messages,
        ops,
        presence,
        search,
        users,
        web,
    )

    for module in (
        users,
        blocks,
        conversations,
        messages,
        attachments,
        events,
        presence,
        search,
        devices,
        ops,
        web,
    ):
        app.register_blueprint(module.bp)
