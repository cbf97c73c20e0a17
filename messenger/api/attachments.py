"""Uploads (streamed), downloads (Range, ETag) and thumbnails."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import gevent
from flask import Blueprint, Response, g, request

from messenger import runtime
from messenger.api import limits
from messenger.api.auth import authenticated
from messenger.api.common import path_id
from messenger.api.operation import operation
from messenger.blobs import CHUNK_BYTES
from messenger.errors import BadRequest, NotFound, RangeNotSatisfiable
from messenger.models import Attachment
from messenger.schemas import envelopes as env
from messenger.schemas.attachments import UploadQuery
from messenger.schemas.base import load
from messenger.services import attachments
from messenger.views import attachment_json

bp = Blueprint("attachments", __name__, url_prefix="/v1")

# A slow network still sends something every few seconds; a client silent this
# long while uploading is gone (limits.BODY_READ_TIMEOUT_SECS, per chunk here).
CHUNK_READ_TIMEOUT_SECS = limits.BODY_READ_TIMEOUT_SECS
# 25 MiB at a slow 64 kbit/s takes about an hour; nothing longer is an upload.
UPLOAD_MAX_SECS = 3600
# Types a browser would run or render as a document: served as bytes.
_ACTIVE_TYPE = re.compile(r"html|xml|javascript|ecmascript|svg", re.I)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)\Z")
_UPLOAD_DOC = (
    "The file's raw bytes (not a form), with the file's own Content-Type; at most "
    "MESSENGER_ATTACHMENT_MAX_BYTES (default 25 MiB). Streamed: never the whole "
    "file in memory."
)
_BINARY = {"type": "string", "format": "binary"}


@bp.post("/attachments")
@operation(
    "Upload a file (raw body); send it with a message's attachment_ids.",
    query=UploadQuery,
    raw_body=_UPLOAD_DOC,
    responses={201: env.AttachmentEnvelope},
    rate_limited=True,
    descriptions={
        413: "The file is larger than MESSENGER_ATTACHMENT_MAX_BYTES.",
        422: "An empty body, a bad filename or Content-Type, or a raster image "
        "type whose bytes do not decode as an image.",
    },
)
@authenticated
def upload() -> Any:
    limits.per_user("upload")
    query = load(UploadQuery(), request.args)
    content_type = attachments.check_content_type(request.headers.get("Content-Type"))
    attachment = attachments.upload(
        g.user_id,
        _body_chunks(runtime.get().settings.attachment_max_bytes),
        content_type=content_type,
        filename=query["filename"],
        declared_size=request.content_length,
    )
    return {"attachment": attachment_json(attachment)}, 201


def _body_chunks(max_bytes: int) -> Iterator[bytes]:
    """The request body as it arrives, each chunk within CHUNK_READ_TIMEOUT_SECS
    and all of it within UPLOAD_MAX_SECS. Stops one chunk past max_bytes (the
    service answers 413)."""
    stream = request.stream
    deadline = time.monotonic() + UPLOAD_MAX_SECS
    received = 0
    # Each read returns at least one byte or ends the body: bounded by the size.
    for _ in range(max_bytes + 2):
        timeout = min(CHUNK_READ_TIMEOUT_SECS, deadline - time.monotonic())
        slow = BadRequest(f"The upload stalled for {CHUNK_READ_TIMEOUT_SECS} s.")
        with gevent.Timeout(max(timeout, 0.001), slow):
            chunk = stream.read(CHUNK_BYTES)
        if not chunk:
            return
        received += len(chunk)
        yield chunk
        if received > max_bytes:
            return


@bp.get("/attachments/<int:attachment_id>")
@operation(
    "Download an attachment (Range and If-None-Match supported).",
    responses={200: lambda: _BINARY, 206: lambda: _BINARY, 304: None},
    errors=(416,),
    media_type="*/*",
    description="Its uploader and the current members of a conversation with a "
    "live message carrying it may fetch it; anyone else gets 404. Types a browser "
    "would run (HTML, SVG, XML, JavaScript) are served as "
    "application/octet-stream; raster images inline, anything else as a "
    "download with its filename.",
)
@authenticated
def download(attachment_id: int) -> Any:
    attachment = attachments.visible(g.user_id, path_id(attachment_id))
    return _send(attachment)


@bp.get("/attachments/<int:attachment_id>/thumbnail")
@operation(
    "A raster image attachment's thumbnail (WebP, at most 320 px on its longer "
    "side); other attachments: 404.",
    responses={200: lambda: _BINARY, 304: None},
    media_type="image/webp",
)
@authenticated
def thumbnail(attachment_id: int) -> Any:
    attachment = attachments.visible(g.user_id, path_id(attachment_id))
    etag = f'"{attachment.sha256}-thumb"'
    if _matches(etag):
        return _not_modified(etag)
    key = attachments.thumbnail_key(g.user_id, attachment.attachment_id)
    blobs = runtime.get().blobs
    data = b"".join(blobs.read(key, 0, attachments.THUMBNAIL_MAX_BYTES))
    response = Response(data, mimetype=attachments.THUMBNAIL_TYPE)
    _cache_headers(response, etag)
    return response


def safe_content_type(content_type: str) -> str:
    return (
        "application/octet-stream"
        if _ACTIVE_TYPE.search(content_type)
        else (content_type)
    )


def content_disposition(attachment: Attachment) -> str:
    kind = "inline" if attachment.is_image else "attachment"
    fallback = "".join(
        ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%' else "_"
        for ch in attachment.filename
    )
    return (
        f'{kind}; filename="{fallback}"; '
        f"filename*=UTF-8''{quote(attachment.filename, safe='')}"
    )


def _matches(etag: str) -> bool:
    header = request.headers.get("If-None-Match", "")
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _cache_headers(response: Response, etag: str) -> None:
    response.headers["ETag"] = etag
    # Access is checked on every request: caches keep it private and revalidate.
    response.headers["Cache-Control"] = "private, no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"


def _not_modified(etag: str) -> Response:
    response = Response(status=304)
    _cache_headers(response, etag)
    return response


def _range(size: int) -> tuple[int, int] | None:
    """The one byte range asked for, as (start, end inclusive); None for the
    whole file (no Range, several ranges, or one that doesn't parse).

    Raises:
        RangeNotSatisfiable: a range that starts past the end.
    """
    header = request.headers.get("Range", "").strip()
    match = _RANGE.match(header.replace(" ", ""))
    if not match:
        return None
    first, last = match[1], match[2]
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None  # not a valid range: ignored (RFC 9110, 14.2)
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(end, size - 1)


def _send(attachment: Attachment) -> Response:
    etag = f'"{attachment.sha256}"'
    if _matches(etag):
        return _not_modified(etag)
    span = _range(attachment.size)
    rt = runtime.get()
    content_type = safe_content_type(attachment.content_type)
    accel = rt.settings.attachment_accel_redirect
    name = rt.blobs.local_name(attachment.sha256) if accel else None
    if name is not None:
        # nginx sends the file (and answers the Range) from its internal
        # location; the app has decided who may have it.
        response = Response(status=200, mimetype=content_type)
        response.headers["X-Accel-Redirect"] = accel + name
    else:
        start, end = span if span else (0, attachment.size - 1)
        length = end - start + 1
        try:
            chunks = rt.blobs.read(attachment.sha256, start, length)
        except FileNotFoundError:
            raise NotFound("The attachment's file is gone.") from None
        response = Response(chunks, mimetype=content_type, direct_passthrough=True)
        response.content_length = length
        if span:
            response.status_code = 206
            response.headers["Content-Range"] = f"bytes {start}-{end}/{attachment.size}"
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Disposition"] = content_disposition(attachment)
    _cache_headers(response, etag)
    return response
