"""The blob store interface (see messenger/blobs/__init__.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

# How much of a blob is read or written per step while streaming.
CHUNK_BYTES = 64 * 1024


class BlobStore(Protocol):
    """Byte storage by key."""

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store the file at `path` under `key`, atomically (readers see the old
        blob or the whole new one); the file is consumed (moved or removed)."""

    def read(self, key: str, start: int, length: int) -> Iterator[bytes]:
        """`length` bytes from `start`, in chunks; FileNotFoundError when the
        blob is missing (raised before the first chunk)."""

    def download(self, key: str, path: Path) -> None:
        """Copy the blob into a local file (thumbnails are made from one)."""

    def exists(self, key: str) -> bool: ...

    def age_secs(self, key: str) -> float | None:
        """Seconds since the blob was last written; None when it is missing."""

    def delete(self, key: str) -> None:
        """Remove the blob; nothing happens when it is missing."""

    def local_name(self, key: str) -> str | None:
        """The blob's path relative to the store's folder, for a store on this
        machine's disk (nginx serves it: X-Accel-Redirect); None for a remote
        store."""

    def spool_dir(self) -> Path:
        """A folder for files being received, on the same file system as the
        store when it is local (so put_file can rename)."""
