"""A long-polling HTTP messenger.

`create_app(settings)` assembles the Flask app (in messenger.app). Importing the
package itself stays cheap: gunicorn.conf.py imports messenger.settings before
gevent patches the standard library, so nothing here may import redis or psycopg2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from messenger.settings import Settings


def create_app(settings: Settings | None = None, **kwargs: Any) -> Flask:
    from messenger.app import create_app as _create_app

    return _create_app(settings, **kwargs)
