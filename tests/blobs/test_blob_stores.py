"""The two blob stores behind one interface: a folder, and S3-compatible object
storage, here a real S3-protocol server: moto's standalone `moto_server`, run
as its own process on 127.0.0.1 (boto3 talks HTTP to it exactly as to S3)."""

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from messenger import runtime
from messenger.blobs.base import BlobStore
from messenger.blobs.local import LocalBlobStore
from messenger.blobs.s3 import S3BlobStore
from messenger.embedded import free_port
from messenger.services import attachments
from tests.conftest import Services, png_bytes

MOTO_START_SECS = 30
BUCKET = "messenger-test"


@pytest.fixture(scope="module")
def s3_url(services: Services) -> Iterator[str]:
    """A moto_server process on a free loopback port, with a bucket; stopped after
    the module. boto3 reads its (dummy) credentials from AWS_* variables."""
    port = free_port()
    program = Path(sys.executable).with_name("moto_server")
    log = open(services.root / f"moto-{port}.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [str(program), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        deadline = time.monotonic() + MOTO_START_SECS
        while True:
            assert process.poll() is None, "moto_server exited"
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5),
            ):
                break
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1"
        ).create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}/blobs?endpoint={endpoint}&region=us-east-1"
    finally:
        patch.undo()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(params=["folder", "s3"])
def store(request: Any, services: Services) -> BlobStore:
    if request.param == "folder":
        return LocalBlobStore(services.root / "blob-tests" / secrets.token_hex(4))
    url = request.getfixturevalue("s3_url")
    return S3BlobStore.from_url(url, spool=services.root / "spool")


def _spooled(store: BlobStore, data: bytes) -> Path:
    path = store.spool_dir() / secrets.token_hex(6)
    path.write_bytes(data)
    return path


def test_a_store_keeps_reads_ranges_and_deletes(store: BlobStore) -> None:
    data = secrets.token_bytes(200_000)
    key = secrets.token_hex(32)
    assert not store.exists(key) and store.age_secs(key) is None
    spooled = _spooled(store, data)
    store.put_file(key, spooled, "application/octet-stream")
    assert not spooled.exists()  # consumed
    assert store.exists(key)
    age = store.age_secs(key)
    assert age is not None and -5 < age < 60
    assert b"".join(store.read(key, 0, len(data))) == data
    assert b"".join(store.read(key, 70_000, 100)) == data[70_000:70_100]
    target = store.spool_dir() / "copy"
    store.download(key, target)
    assert target.read_bytes() == data
    target.unlink()
    # Putting the same key again replaces it whole.
    store.put_file(key, _spooled(store, b"new"), "text/plain")
    assert b"".join(store.read(key, 0, 3)) == b"new"
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # a second time: nothing happens
    with pytest.raises(FileNotFoundError):
        store.read(key, 0, 1)
    with pytest.raises(FileNotFoundError):
        store.download(key, store.spool_dir() / "nothing")


def test_the_folder_store_is_content_addressed(services: Services) -> None:
    store = LocalBlobStore(services.root / "blob-tests" / "addressed")
    key = "ab" + "cd" + "e" * 60
    store.put_file(key, _spooled(store, b"x"), "text/plain")
    assert (store.root / "ab" / "cd" / key).read_bytes() == b"x"
    assert store.local_name(key) == f"ab/cd/{key}"
    for bad in ("", "../etc", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            store.local_name(bad)


@pytest.fixture
def s3_app(s3_url: str, app: Any, services: Services) -> Iterator[S3BlobStore]:
    """The running app with its attachments in S3 for one test."""
    rt = runtime.get()
    folder = rt.blobs
    rt.blobs = S3BlobStore.from_url(s3_url, spool=services.root / "spool")
    try:
        yield rt.blobs  # type: ignore[misc]
    finally:
        rt.blobs = folder


def test_the_api_over_s3(
    client: Any, make_user: Any, chat: Any, s3_app: S3BlobStore
) -> None:
    alice, bob = make_user(), make_user()
    data = png_bytes(640, 480)
    r = client.post(
        "/v1/attachments?filename=big.png",
        headers={**alice.headers, "Content-Type": "image/png"},
        data=data,
    )
    assert r.status_code == 201, r.get_json()
    att = r.get_json()["attachment"]
    assert s3_app.exists(att["sha256"])
    cid = chat.direct(alice, bob)
    r = client.post(
        f"/v1/conversations/{cid}/messages",
        headers=alice.headers,
        json={"client_msg_id": "s3", "attachment_ids": [att["id"]]},
    )
    assert r.status_code == 201
    path = f"/v1/attachments/{att['id']}"
    r = client.get(path, headers=bob.headers)
    assert r.status_code == 200 and r.data == data
    r = client.get(path, headers={**bob.headers, "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.data == data[10:20]
    r = client.get(path + "/thumbnail", headers=bob.headers)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/webp"
    assert s3_app.exists(att["sha256"] + attachments.THUMBNAIL_SUFFIX)
    # The collector removes an unsent upload's object from the bucket.
    r = client.post(
        "/v1/attachments",
        headers={**alice.headers, "Content-Type": "text/plain"},
        data=b"never sent " + secrets.token_bytes(8),
    )
    unsent = r.get_json()["attachment"]
    with runtime.get().router.on_user(unsent["id"], "test_age") as cur:
        cur.run(
            "UPDATE {s}.attachments SET created_at = now() - interval '2 days' "
            "WHERE attachment_id = %s",
            (unsent["id"],),
        )
    assert attachments.collect(runtime.get(), blob_grace_secs=0) >= 1
    assert not s3_app.exists(unsent["sha256"])
    assert s3_app.exists(att["sha256"])


def test_an_object_store_that_is_down_answers_503(
    client: Any, make_user: Any, app: Any, services: Services, s3_url: str
) -> None:
    rt = runtime.get()
    folder = rt.blobs
    dead = f"http://127.0.0.1:{free_port()}"
    rt.blobs = S3BlobStore.from_url(
        f"s3://{BUCKET}?endpoint={dead}", spool=services.root / "spool"
    )
    try:
        alice = make_user()
        r = client.post(
            "/v1/attachments",
            headers={**alice.headers, "Content-Type": "text/plain"},
            data=b"hello",
        )
    finally:
        rt.blobs = folder
    assert r.status_code == 503, r.get_json()
    assert r.get_json()["error"]["code"] == "unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    assert os.listdir(services.root / "spool") == []
