"""Request limits at the HTTP edge: rate limits by user or client address, and
bounds on how long a slow client may keep a greenlet reading its request."""

from __future__ import annotations

import ipaddress
from typing import Any

import gevent
from flask import Flask, current_app, g, request

from messenger import runtime
from messenger.errors import BadRequest, PayloadTooLarge
from messenger.services import ratelimit

# A request body (at most 64 KiB) that takes longer than this to arrive is a
# slow-loris client, not a slow network: answer 400 and free the greenlet.
# gunicorn bounds the header read (its keepalive timeout); nothing else bounds
# the body read.
BODY_READ_TIMEOUT_SECS = 15
# A client that stops reading its answer for this long (beyond the longest
# poll, so an idle keep-alive connection between polls is not cut) is gone.
SOCKET_TIMEOUT_MARGIN_SECS = 20


def per_user(name: str, scope: int | None = None) -> None:
    """Count this request against limit `name` for the authenticated user (and,
    with `scope`, one conversation of that user)."""
    subject = f"user:{g.user_id}" if scope is None else f"user:{g.user_id}:{scope}"
    ratelimit.check(name, subject)


def per_address(name: str) -> None:
    """Count this request against limit `name` for the client's IP address."""
    ratelimit.check(name, f"ip:{address_key(request.remote_addr)}")


def address_key(address: str | None) -> str:
    """The client address a per-address limit counts: an IPv6 address by its
    /64 (one subscriber gets a whole /64 and may use any address in it), an
    IPv4 address (or an IPv4-mapped IPv6 one) as itself."""
    if not address:
        return "-"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


# Routes that read their (large) body themselves, as a stream, with their own
# size limit: nothing reads it up front, and the 64 KiB limit is lifted for them
# alone.
STREAMED_BODY_ENDPOINTS = frozenset({"attachments.upload"})
STREAMED_BODY_MAX_BYTES = 2**62


def bound_socket(sock: Any) -> None:
    """Bound each send of the answer (and reads of a pipelined request) on the
    client's socket, when the server exposes it (gunicorn does)."""
    if sock is not None:
        max_poll_secs = runtime.get().settings.poll_timeout_max_secs
        sock.settimeout(max_poll_secs + SOCKET_TIMEOUT_MARGIN_SECS)


def _bound_slow_clients() -> None:
    bound_socket(request.environ.get("gunicorn.socket"))
    if request.endpoint in STREAMED_BODY_ENDPOINTS:
        # None would mean "the app's limit"; the route counts bytes itself.
        request.max_content_length = STREAMED_BODY_MAX_BYTES
        return
    if request.method in ("POST", "PUT", "PATCH", "DELETE") and (
        request.content_length or request.headers.get("Transfer-Encoding")
    ):
        # Read the body now, under a deadline; request.get_data() then returns
        # it from memory. Too large a body still raises 413 here.
        with gevent.Timeout(BODY_READ_TIMEOUT_SECS, False):
            body = request.get_data(cache=True)
            max_bytes = current_app.config["MAX_CONTENT_LENGTH"]
            # werkzeug cuts a chunked body at the limit silently: if anything
            # follows, it was too large.
            if (
                request.content_length is None
                and len(body) >= max_bytes
                and request.environ["wsgi.input"].read(1)
            ):
                raise PayloadTooLarge("The request body is larger than 64 KiB.")
            return
        raise BadRequest(
            f"The request body did not arrive within {BODY_READ_TIMEOUT_SECS} s."
        )


def install(app: Flask) -> None:
    """Bound every request's reads and writes (call from create_app)."""
    app.before_request(_bound_slow_clients)
