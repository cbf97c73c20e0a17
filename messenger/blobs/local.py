"""Blobs in a folder: `<root>/ab/cd/<key>`, written atomically."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from messenger.blobs.base import CHUNK_BYTES


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def local_name(self, key: str) -> str | None:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad blob key {key!r}")
        return f"{key[:2]}/{key[2:4]}/{key}"

    def path_of(self, key: str) -> Path:
        return self.root / str(self.local_name(key))

    def spool_dir(self) -> Path:
        spool = self.root / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        return spool

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        target = self.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Readable by a front server (nginx's workers run as another user).
            path.chmod(0o644)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            # Replacing an equal blob refreshes its time, which keeps the
            # collector (age_secs) off bytes an upload has just claimed.
            os.replace(path, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def read(self, key: str, start: int, length: int) -> Iterator[bytes]:
        f = open(self.path_of(key), "rb")  # noqa: SIM115 - closed by the generator
        return _chunks(f, start, length)

    def download(self, key: str, path: Path) -> None:
        with open(self.path_of(key), "rb") as src, open(path, "wb") as dst:
            for _ in range(1 << 40):
                chunk = src.read(CHUNK_BYTES)
                if not chunk:
                    return
                dst.write(chunk)

    def exists(self, key: str) -> bool:
        return self.path_of(key).exists()

    def age_secs(self, key: str) -> float | None:
        try:
            return time.time() - self.path_of(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_of(key).unlink()


def _chunks(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    with f:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(CHUNK_BYTES, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
