"""Uploads, who may fetch them, thumbnails, and removing uploads never sent.

- An upload streams to a spool file while its SHA-256 and size are counted (the
  whole file is never in memory); a raster image must decode, and its pixel size
  is recorded. The bytes go to the blob store under their sha256 (equal uploads
  share one blob), then the metadata row is written on shard_of(attachment_id).
- Who may fetch an attachment (API.md): its uploader, and every current member
  of a conversation with a live message carrying it. Anyone else gets NotFound,
  exactly as for an id that does not exist.
- Thumbnails are made on first request, at most THUMBNAIL_MAX_PX on the longer
  side, and kept in the blob store beside the original (`<sha256>.thumb`).
- Uploads no live message carries are removed after
  `attachment_unsent_hours` (collect()).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import gevent
from PIL import Image, ImageOps, UnidentifiedImageError

from messenger import runtime
from messenger.errors import BadRequest, NotFound, PayloadTooLarge, ValidationFailed
from messenger.models import Attachment
from messenger.runtime import Runtime
from messenger.storage import attachments as store
from messenger.storage import users as user_store
from messenger.storage.shards import schema_name

logger = logging.getLogger(__name__)

THUMBNAIL_MAX_PX = 320
THUMBNAIL_TYPE = "image/webp"
THUMBNAIL_SUFFIX = ".thumb"
# A 320 px WebP is tens of KiB; a thumbnail is read whole, up to this.
THUMBNAIL_MAX_BYTES = 4 * 1024 * 1024
# At most this many attachments in one message (API.md).
ATTACHMENTS_PER_MESSAGE_MAX = 10
FILENAME_MAX_CHARS = 255
DEFAULT_FILENAME = "file"
# A send links its attachments, then stores its message: the collector leaves an
# attachment alone this long after a send named it, so it never removes the
# bytes of a message being stored.
LINK_GRACE_SECS = 3600
# Equal uploads share a blob: the collector removes bytes only when no row has
# them and they were not written this recently (an upload of the same bytes
# rewrites the blob before it inserts its row).
BLOB_GRACE_SECS = 3600
# Candidates read per shard per round of the collector, and rounds at most.
COLLECT_BATCH = 500
COLLECT_MAX_ROUNDS = 1000
# Each linked conversation is asked about on its own shard; an attachment
# forwarded into more conversations than this is checked in the first ones.
LINKS_CHECKED_MAX = 1000

# type/subtype of RFC 9110 tokens.
_MEDIA_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]{1,64}/[a-z0-9!#$&^_.+-]{1,64}\Z")
# Image types that are not raster images (no pixel size, never decoded).
_NOT_RASTER = frozenset({"image/svg+xml"})


def is_raster_type(content_type: str) -> bool:
    return content_type.startswith("image/") and content_type not in _NOT_RASTER


def check_content_type(raw: str | None) -> str:
    """The media type without parameters, lower case; octet-stream when absent."""
    media = (raw or "").split(";", 1)[0].strip().lower()
    if not media:
        return "application/octet-stream"
    if not _MEDIA_TYPE.match(media):
        raise ValidationFailed(
            "The request is not valid.",
            fields={"Content-Type": ["Not a media type such as image/png."]},
        )
    return media


def upload(
    uploader_id: int,
    chunks: Iterable[bytes],
    *,
    content_type: str,
    filename: str,
    declared_size: int | None,
) -> Attachment:
    """Store an upload; returns its Attachment.

    `chunks` is the request body as it arrives (the HTTP layer bounds how long
    each chunk may take). Nothing is stored when it fails.

    Raises:
        BadRequest: fewer bytes arrived than the request declared.
        PayloadTooLarge: more than attachment_max_bytes (declared or sent).
        ValidationFailed: an empty body, or a raster image type whose bytes do
            not decode as an image.
    """
    rt = runtime.get()
    max_bytes = rt.settings.attachment_max_bytes
    if declared_size is not None and declared_size > max_bytes:
        raise PayloadTooLarge(_too_large(max_bytes))
    spool = rt.blobs.spool_dir() / f"upload-{secrets.token_hex(8)}"
    try:
        digest, size = _receive(chunks, spool, max_bytes)
        if declared_size is not None and size != declared_size:
            # The client went away mid-upload: never store a truncated file.
            raise BadRequest(
                f"The upload ended after {size} of its {declared_size} bytes."
            )
        if size == 0:
            raise ValidationFailed(
                "The request is not valid.", fields={"body": ["The file is empty."]}
            )
        width = height = None
        if is_raster_type(content_type):
            width, height = _threaded(_image_size, spool)
        with rt.router.directory("allocate_attachment_id", transaction=False) as cur:
            attachment_id = user_store.next_id(cur)
        rt.blobs.put_file(digest, spool, content_type)
    finally:
        spool.unlink(missing_ok=True)
    with rt.router.on_user(attachment_id, "insert_attachment") as cur:
        return store.insert(
            cur,
            attachment_id,
            uploader_id,
            content_type,
            size,
            filename,
            digest,
            width,
            height,
        )


def _too_large(max_bytes: int) -> str:
    return f"The file is larger than {max_bytes} bytes."


def _receive(chunks: Iterable[bytes], path: Path, max_bytes: int) -> tuple[str, int]:
    """Write the chunks to path, hashing as they pass; (sha256 hex, size)."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "wb") as f:
        for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(_too_large(max_bytes))
            sha.update(chunk)
            f.write(chunk)
    return sha.hexdigest(), size


def _threaded(fn: Callable[..., tuple[int, int]], *args: object) -> tuple[int, int]:
    """Pillow's decoding holds the CPU: run it off the event loop."""
    result: tuple[int, int] = gevent.get_hub().threadpool.apply(fn, args)
    return result


def _image_size(path: Path) -> tuple[int, int]:
    """The pixel size of a raster image that decodes whole; ValidationFailed else."""
    try:
        with warnings.catch_warnings():
            # A decompression bomb is refused, not decoded.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size = image.size
                image.load()
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ):
        raise ValidationFailed(
            "The request is not valid.",
            fields={"body": ["Not a valid image of its Content-Type."]},
        ) from None
    return int(size[0]), int(size[1])


# ---- who may fetch ------------------------------------------------------------


def visible(user_id: int, attachment_id: int) -> Attachment:
    """The attachment if user_id may fetch it.

    Raises:
        NotFound: no such attachment, or the user may not see it.
    """
    router = runtime.get().router
    with router.on_user(attachment_id, "attachment", transaction=False) as cur:
        found = store.get(cur, attachment_id)
        links = store.linked_conversations(cur, attachment_id) if found else []
    if found is None:
        raise NotFound("No such attachment.")
    if found.uploader_id == user_id:
        return found
    by_schema: dict[str, list[int]] = defaultdict(list)
    for conversation_id in links[:LINKS_CHECKED_MAX]:
        by_schema[router.schema_of(conversation_id)].append(conversation_id)
    for conversation_ids in by_schema.values():
        with router.on_conversation(
            conversation_ids[0], "attachment_access", transaction=False
        ) as cur:
            if store.carried_for_member(cur, attachment_id, conversation_ids, user_id):
                return found
    raise NotFound("No such attachment.")


def thumbnail_key(user_id: int, attachment_id: int) -> str:
    """The blob key of a raster image's thumbnail, made now if it is not yet.

    Raises:
        NotFound: not visible to the user, or not a raster image.
    """
    attachment = visible(user_id, attachment_id)
    if not attachment.is_image:
        raise NotFound("This attachment has no thumbnail.")
    blobs = runtime.get().blobs
    key = attachment.sha256 + THUMBNAIL_SUFFIX
    if blobs.exists(key):
        return key
    spool = blobs.spool_dir()
    original = spool / f"thumb-src-{secrets.token_hex(8)}"
    made = spool / f"thumb-{secrets.token_hex(8)}"
    try:
        try:
            blobs.download(attachment.sha256, original)
        except FileNotFoundError:
            raise NotFound("The attachment's file is gone.") from None
        _threaded(_make_thumbnail, original, made)
        blobs.put_file(key, made, THUMBNAIL_TYPE)
    finally:
        original.unlink(missing_ok=True)
        made.unlink(missing_ok=True)
    return key


def _make_thumbnail(source: Path, target: Path) -> tuple[int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as opened:
            image: Image.Image = ImageOps.exif_transpose(opened)
            image.thumbnail((THUMBNAIL_MAX_PX, THUMBNAIL_MAX_PX))
            if image.mode not in ("RGB", "RGBA"):
                image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
            image.save(target, "WEBP", quality=80)
            return image.size


# ---- sending ------------------------------------------------------------------


def for_send(
    sender_id: int, conversation_id: int, attachment_ids: list[int]
) -> list[Attachment]:
    """The sender's own attachments, in the order given, linked to the
    conversation (before the message is stored: see LINK_GRACE_SECS).

    Raises:
        ValidationFailed: an id that is not an upload of the sender.
    """
    router = runtime.get().router
    by_schema: dict[str, list[int]] = defaultdict(list)
    for attachment_id in attachment_ids:
        by_schema[router.schema_of(attachment_id)].append(attachment_id)
    found: dict[int, Attachment] = {}
    for ids in by_schema.values():
        with router.on_user(ids[0], "attachments_for_send") as cur:
            mine = [a for a in store.get_many(cur, ids) if a.uploader_id == sender_id]
            if len(mine) == len(ids):
                store.link(cur, ids, conversation_id)
            found.update((a.attachment_id, a) for a in mine)
    missing = [a for a in attachment_ids if a not in found]
    if missing:
        raise ValidationFailed(
            "The request is not valid.",
            fields={"attachment_ids": [f"No upload of yours has the id {missing[0]}."]},
        )
    return [found[a] for a in attachment_ids]


# ---- removing uploads never sent ------------------------------------------------

Progress = Callable[[int, int], object]


def collect(
    rt: Runtime,
    progress: Progress | None = None,
    *,
    blob_grace_secs: float = BLOB_GRACE_SECS,
) -> int:
    """Remove attachments no live message carries, older than
    attachment_unsent_hours, and their bytes when no other attachment has them;
    returns how many. `progress(done, total)` is called after each shard."""
    router = rt.router
    now = datetime.now(UTC)
    cutoff = now - timedelta(hours=rt.settings.attachment_unsent_hours)
    link_cutoff = now - timedelta(seconds=LINK_GRACE_SECS)
    shards = router.shard_map.shards
    removed = 0
    for shard in range(shards):
        removed += _collect_shard(rt, shard, cutoff, link_cutoff, blob_grace_secs)
        if progress is not None:
            progress(shard + 1, shards)
    return removed


def _collect_shard(
    rt: Runtime,
    shard: int,
    cutoff: datetime,
    link_cutoff: datetime,
    blob_grace_secs: float,
) -> int:
    router = rt.router
    dsn = router.shard_map.dsn_of_shard(shard)
    removed = 0
    kept: set[int] = set()
    for _round in range(COLLECT_MAX_ROUNDS):
        with router.on_dsn(dsn, "collect_attachments", transaction=False) as cur:
            cur.schema = schema_name(shard)
            batch = [
                a
                for a in store.stale(
                    cur, cutoff, link_cutoff, COLLECT_BATCH + len(kept)
                )
                if a.attachment_id not in kept
            ]
            links = store.links_of(cur, [a.attachment_id for a in batch])
        if not batch:
            return removed
        carried = _carried(rt, links)
        for attachment in batch:
            if attachment.attachment_id in carried:
                kept.add(attachment.attachment_id)
                continue
            with router.on_dsn(dsn, "delete_attachment") as cur:
                cur.schema = schema_name(shard)
                if not store.delete(cur, attachment.attachment_id, link_cutoff):
                    kept.add(attachment.attachment_id)
                    continue
            removed += 1
            _drop_blob_if_unused(rt, attachment.sha256, blob_grace_secs)
    logger.warning("attachments: shard %s: collection stopped after its rounds", shard)
    return removed


def _carried(rt: Runtime, links: dict[int, list[int]]) -> set[int]:
    """Those attachments a live message of a linked conversation carries."""
    router = rt.router
    by_schema: dict[str, tuple[set[int], set[int]]] = defaultdict(
        lambda: (set(), set())
    )
    for attachment_id, conversation_ids in links.items():
        for conversation_id in conversation_ids:
            ids, convs = by_schema[router.schema_of(conversation_id)]
            ids.add(attachment_id)
            convs.add(conversation_id)
    carried: set[int] = set()
    for ids, convs in by_schema.values():
        with router.on_conversation(
            min(convs), "attachments_carried", transaction=False
        ) as cur:
            carried |= store.carried(cur, sorted(ids), sorted(convs))
    return carried


def _drop_blob_if_unused(rt: Runtime, sha256: str, grace_secs: float) -> None:
    router = rt.router
    for dsn, shards in router.shard_map.shards_by_dsn().items():
        with router.on_dsn(dsn, "attachment_blob_in_use", transaction=False) as cur:
            for shard in shards:
                cur.schema = schema_name(shard)
                if store.sha_in_use(cur, sha256):
                    return
    age = rt.blobs.age_secs(sha256)
    if age is not None and age < grace_secs:
        return
    rt.blobs.delete(sha256 + THUMBNAIL_SUFFIX)
    rt.blobs.delete(sha256)
