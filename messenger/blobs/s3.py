"""Blobs in S3-compatible object storage (boto3), configured by URL:
`s3://bucket/optional/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1`.

Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, a profile, an instance role). An object store writes each
object whole, so a reader never sees a partial blob.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import boto3.exceptions
import botocore.config
import botocore.exceptions

from messenger.blobs.base import CHUNK_BYTES
from messenger.errors import Unavailable
from messenger.settings import ConfigError

# Bounds on talking to the object store, so a request never hangs on it.
CONNECT_TIMEOUT_SECS = 5
READ_TIMEOUT_SECS = 30


@contextlib.contextmanager
def _answering() -> Iterator[None]:
    """The object store down, or refusing: 503 with Retry-After for the client
    (a missing object is each method's own answer)."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        if _missing(exc):
            raise
        raise Unavailable("The attachment store refused the request.") from exc
    except (botocore.exceptions.BotoCoreError, boto3.exceptions.Boto3Error) as exc:
        raise Unavailable("The attachment store did not answer.") from exc


class S3BlobStore:
    def __init__(self, client: Any, bucket: str, prefix: str, spool: Path) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.spool = spool

    @classmethod
    def from_url(cls, url: str, spool: Path) -> S3BlobStore:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigError(
                "MESSENGER_ATTACHMENT_STORE must name a bucket: s3://bucket/prefix."
            )
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=query.get("endpoint") or None,
            region_name=query.get("region") or "us-east-1",
            config=botocore.config.Config(
                connect_timeout=CONNECT_TIMEOUT_SECS,
                read_timeout=READ_TIMEOUT_SECS,
                retries={"max_attempts": 3},
                # Path-style URLs work with every S3-compatible server.
                s3={"addressing_style": "path"},
            ),
        )
        prefix = parts.path.strip("/")
        return cls(client, parts.hostname, f"{prefix}/" if prefix else "", spool)

    def _key(self, key: str) -> str:
        if not key or "/" in key:
            raise ValueError(f"bad blob key {key!r}")
        return self.prefix + key

    def spool_dir(self) -> Path:
        self.spool.mkdir(parents=True, exist_ok=True)
        return self.spool

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        try:
            with _answering():
                # upload_file streams from disk (multipart for large files).
                self.client.upload_file(
                    str(path),
                    self.bucket,
                    self._key(key),
                    ExtraArgs={"ContentType": content_type},
                )
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def read(self, key: str, start: int, length: int) -> Iterator[bytes]:
        if length <= 0:
            return iter(())
        try:
            with _answering():
                answer = self.client.get_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Range=f"bytes={start}-{start + length - 1}",
                )
        except botocore.exceptions.ClientError:
            raise FileNotFoundError(key) from None
        return _stream(answer["Body"])

    def download(self, key: str, path: Path) -> None:
        try:
            with _answering():
                self.client.download_file(self.bucket, self._key(key), str(path))
        except botocore.exceptions.ClientError:
            raise FileNotFoundError(key) from None

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            with _answering():
                head: dict[str, Any] = self.client.head_object(
                    Bucket=self.bucket, Key=self._key(key)
                )
        except botocore.exceptions.ClientError:
            return None
        return head

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def age_secs(self, key: str) -> float | None:
        head = self._head(key)
        if head is None:
            return None
        return time.time() - head["LastModified"].timestamp()

    def delete(self, key: str) -> None:
        with _answering():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def local_name(self, key: str) -> str | None:
        return None


def _missing(exc: botocore.exceptions.ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def _stream(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()
