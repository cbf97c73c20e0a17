"""Where attachment bytes live: one small interface, two backends.

- LocalBlobStore (the default): a folder under the data directory,
  content-addressed (`ab/cd/<key>`), each blob written atomically (a temporary
  file in the same folder tree, then a rename).
- S3BlobStore: any S3-compatible object storage through boto3, configured by URL
  (`s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1`).

Keys are a blob's sha256 (the original bytes) or `<sha256>.thumb` (its cached
thumbnail). Nothing here knows users or conversations: who may read what is
decided in services/attachments.py.
"""

from __future__ import annotations

from pathlib import Path

from messenger.blobs.base import CHUNK_BYTES, BlobStore
from messenger.settings import Settings

__all__ = ["CHUNK_BYTES", "BlobStore", "from_settings"]


def from_settings(settings: Settings) -> BlobStore:
    """The store MESSENGER_ATTACHMENT_STORE names (a folder by default)."""
    url = settings.attachment_store
    if url.startswith("s3://"):
        from messenger.blobs.s3 import S3BlobStore

        return S3BlobStore.from_url(url, spool=settings.data_dir / "spool")
    from messenger.blobs.local import LocalBlobStore

    root = Path(url[len("file://") :]) if url else settings.data_dir / "attachments"
    return LocalBlobStore(root)
