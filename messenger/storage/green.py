"""Make psycopg2 cooperative under gevent: a query yields instead of blocking."""

from __future__ import annotations

import psycopg2.extensions

_installed = False


def install() -> None:
    """Install psycogreen's wait callback once (idempotent)."""
    global _installed
    if _installed:
        return
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()
    _installed = True


def is_installed() -> bool:
    return psycopg2.extensions.get_wait_callback() is not None
