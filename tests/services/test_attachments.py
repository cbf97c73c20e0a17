"""Attachments through HTTP: streamed upload with its limits, download with
Range and ETag, safe headers, thumbnails, who may fetch, and the collector."""

import hashlib
import io
import os
import secrets
import subprocess
import sys
import tracemalloc
from datetime import timedelta
from typing import Any

import pytest
from PIL import Image

from messenger import runtime
from messenger.services import attachments
from tests import conftest
from tests.conftest import png_bytes

User = conftest.TestUser


def upload(
    client: Any,
    user: User,
    data: bytes | Any,
    content_type: str | None = "application/octet-stream",
    filename: str | None = "f.bin",
) -> Any:
    headers = dict(user.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    query = f"?filename={filename}" if filename is not None else ""
    return client.post(f"/v1/attachments{query}", headers=headers, data=data)


def uploaded(client: Any, user: User, data: bytes, content_type: str, name: str) -> Any:
    r = upload(client, user, data, content_type, name)
    assert r.status_code == 201, r.get_json()
    return r.get_json()["attachment"]


def send_with(client: Any, user: User, cid: int, ids: list[int], body: str = "") -> Any:
    return client.post(
        f"/v1/conversations/{cid}/messages",
        headers=user.headers,
        json={
            "client_msg_id": secrets.token_hex(6),
            "body": body,
            "attachment_ids": ids,
        },
    )


# ---- upload ----------------------------------------------------------------------


def test_upload_an_image_records_its_size_pixels_and_hash(
    client: Any, make_user: Any
) -> None:
    alice = make_user()
    data = png_bytes(40, 30)
    r = upload(client, alice, data, "image/png", "cat.png")
    assert r.status_code == 201, r.get_json()
    got = r.get_json()["attachment"]
    assert got == {
        "id": got["id"],
        "content_type": "image/png",
        "size": len(data),
        "filename": "cat.png",
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": 40,
        "height": 30,
        "created_at": got["created_at"],
    }
    # Any other type: no pixels; no filename: "file"; parameters dropped.
    r = upload(client, alice, b"%PDF-1.4 hi", "Application/PDF; x=1", None)
    got = r.get_json()["attachment"]
    assert (got["content_type"], got["filename"], got["width"]) == (
        "application/pdf",
        "file",
        None,
    )
    # No Content-Type at all: bytes.
    r = upload(client, alice, b"abc", None, "a")
    assert r.get_json()["attachment"]["content_type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("data", "content_type", "filename", "field"),
    [
        (b"", "text/plain", "empty.txt", "body"),
        (b"not a png", "image/png", "fake.png", "body"),
        (png_bytes()[:40], "image/png", "cut.png", "body"),
        (b"x", "text/plain", "a/b.txt", "filename"),
        (b"x", "text/plain", "bell%07.txt", "filename"),
        (b"x", "text/plain", "n" * 256, "filename"),
        (b"x", "not a type", "x.txt", "Content-Type"),
    ],
)
def test_bad_uploads_are_422_and_store_nothing(
    client: Any,
    make_user: Any,
    data: bytes,
    content_type: str,
    filename: str,
    field: str,
) -> None:
    alice = make_user()
    r = upload(client, alice, data, content_type, filename)
    assert r.status_code == 422, r.get_json()
    assert field in r.get_json()["error"]["fields"]
    assert list(runtime.get().blobs.spool_dir().iterdir()) == []


def test_svg_is_not_checked_as_a_raster_image(client: Any, make_user: Any) -> None:
    r = upload(
        client,
        make_user(),
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        "image/svg+xml",
        "x.svg",
    )
    assert r.status_code == 201 and r.get_json()["attachment"]["width"] is None


def test_too_large_is_413_whether_declared_or_streamed(
    client: Any, make_user: Any, override_settings: Any
) -> None:
    alice = make_user()
    override_settings(attachment_max_bytes=1000)
    assert upload(client, alice, b"x" * 1000).status_code == 201
    r = upload(client, alice, b"x" * 1001)
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "payload_too_large"
    # Chunked (no Content-Length): counted as it arrives.
    r = client.post(
        "/v1/attachments",
        headers={**alice.headers, "Content-Type": "text/plain"},
        input_stream=io.BytesIO(b"y" * 5000),
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert r.status_code == 413, r.get_json()
    assert list(runtime.get().blobs.spool_dir().iterdir()) == []


def test_other_routes_keep_the_64_kib_body_limit(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    r = client.post(
        f"/v1/conversations/{cid}/messages",
        headers={**alice.headers, "Content-Type": "application/json"},
        data=b'{"client_msg_id": "big", "body": "' + b"x" * 70_000 + b'"}',
    )
    assert r.status_code == 413
    # An upload of the same size is fine.
    assert upload(client, alice, b"x" * 70_000).status_code == 201


def test_an_upload_streams_through_without_being_held_in_memory(
    client: Any, make_user: Any, services: Any
) -> None:
    alice = make_user()
    size = 12 * 1024 * 1024
    path = services.root / f"big-{secrets.token_hex(4)}.bin"
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(size // 65536):
            chunk = bytes([i % 251]) * 65536
            sha.update(chunk)
            f.write(chunk)
    try:
        with open(path, "rb") as body:
            tracemalloc.start()
            try:
                r = client.post(
                    "/v1/attachments?filename=big.bin",
                    headers={
                        **alice.headers,
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                    input_stream=body,
                )
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        path.unlink()
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["attachment"]["sha256"] == sha.hexdigest()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte upload"


def test_uploads_are_rate_limited(
    client: Any, make_user: Any, override_settings: Any
) -> None:
    alice = make_user()
    override_settings(rate_limits="upload=2/60s")
    assert upload(client, alice, b"1").status_code == 201
    assert upload(client, alice, b"2").status_code == 201
    r = upload(client, alice, b"3")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


# ---- download --------------------------------------------------------------------


def test_download_with_etag_ranges_and_safe_headers(
    client: Any, make_user: Any
) -> None:
    alice = make_user()
    data = bytes(range(256)) * 4  # 1024 bytes
    att = uploaded(client, alice, data, "application/pdf", "Report «Q1».pdf")
    path = f"/v1/attachments/{att['id']}"
    r = client.get(path, headers=alice.headers)
    assert r.status_code == 200 and r.data == data
    assert r.headers["Content-Type"] == "application/pdf"
    assert r.headers["Content-Length"] == "1024"
    assert r.headers["ETag"] == f'"{att["sha256"]}"'
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Accept-Ranges"] == "bytes"
    disposition = r.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="Report _Q1_.pdf"')
    assert "filename*=UTF-8''Report%20%C2%ABQ1%C2%BB.pdf" in disposition
    # If-None-Match with the ETag (or among others, or weak): 304, no body.
    for tag in (r.headers["ETag"], f'"other", {r.headers["ETag"]}', "*"):
        again = client.get(path, headers={**alice.headers, "If-None-Match": tag})
        assert again.status_code == 304 and again.data == b""
        assert again.headers["ETag"] == r.headers["ETag"]
    other = client.get(path, headers={**alice.headers, "If-None-Match": '"nope"'})
    assert other.status_code == 200
    # Ranges: a-b, a-, -n (past the end: cut), several: the whole file.
    for header, start, end in (
        ("bytes=0-9", 0, 9),
        ("bytes=1000-", 1000, 1023),
        ("bytes=-24", 1000, 1023),
        ("bytes=1020-5000", 1020, 1023),
        ("bytes=-5000", 0, 1023),
    ):
        part = client.get(path, headers={**alice.headers, "Range": header})
        assert part.status_code == 206, header
        assert part.data == data[start : end + 1]
        assert part.headers["Content-Range"] == f"bytes {start}-{end}/1024"
        assert part.headers["Content-Length"] == str(end - start + 1)
    whole = client.get(path, headers={**alice.headers, "Range": "bytes=0-1,5-6"})
    assert whole.status_code == 200 and whole.data == data
    junk = client.get(path, headers={**alice.headers, "Range": "lines=1-2"})
    assert junk.status_code == 200 and junk.data == data
    for header in ("bytes=1024-", "bytes=5000-6000", "bytes=-0"):
        past = client.get(path, headers={**alice.headers, "Range": header})
        assert past.status_code == 416, header
        assert past.get_json()["error"]["code"] == "range_not_satisfiable"
        assert past.headers["Content-Range"] == "bytes */1024"


@pytest.mark.parametrize(
    "content_type",
    [
        "text/html",
        "image/svg+xml",
        "application/xhtml+xml",
        "text/javascript",
        "application/xml",
        "text/xml",
    ],
)
def test_types_a_browser_would_run_are_served_as_bytes(
    client: Any, make_user: Any, content_type: str
) -> None:
    alice = make_user()
    att = uploaded(client, alice, b"<script>alert(1)</script>", content_type, "x")
    r = client.get(f"/v1/attachments/{att['id']}", headers=alice.headers)
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"].startswith("attachment;")
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_raster_images_are_inline_with_a_thumbnail_made_once(
    client: Any, make_user: Any
) -> None:
    alice = make_user()
    att = uploaded(client, alice, png_bytes(1000, 500, "blue"), "image/png", "wide.png")
    r = client.get(f"/v1/attachments/{att['id']}", headers=alice.headers)
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Disposition"].startswith("inline;")
    thumb_path = f"/v1/attachments/{att['id']}/thumbnail"
    r = client.get(thumb_path, headers=alice.headers)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/webp"
    with Image.open(io.BytesIO(r.data)) as thumb:
        assert thumb.format == "WEBP" and thumb.size == (320, 160)
    blobs = runtime.get().blobs
    key = att["sha256"] + attachments.THUMBNAIL_SUFFIX
    assert blobs.exists(key)
    age = blobs.age_secs(key)
    again = client.get(thumb_path, headers=alice.headers)
    assert again.data == r.data
    assert blobs.age_secs(key) >= age  # not written again  # type: ignore[operator]
    cached = client.get(
        thumb_path, headers={**alice.headers, "If-None-Match": r.headers["ETag"]}
    )
    assert cached.status_code == 304
    # A file that is not a raster image has no thumbnail.
    pdf = uploaded(client, alice, b"%PDF", "application/pdf", "a.pdf")
    r = client.get(f"/v1/attachments/{pdf['id']}/thumbnail", headers=alice.headers)
    assert r.status_code == 404


# ---- who may fetch ---------------------------------------------------------------


def fetch(client: Any, user: User, attachment_id: int) -> int:
    return int(
        client.get(f"/v1/attachments/{attachment_id}", headers=user.headers).status_code
    )


def test_only_uploader_and_members_with_a_live_message_may_fetch(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob, carol, stranger = make_user(), make_user(), make_user(), make_user()
    att = uploaded(client, alice, png_bytes(), "image/png", "p.png")
    aid = att["id"]
    # Before it is sent: the uploader only.
    assert fetch(client, alice, aid) == 200
    assert fetch(client, bob, aid) == 404
    gid = chat.group(alice, [bob, carol])
    r = send_with(client, alice, gid, [aid])
    assert r.status_code == 201, r.get_json()
    message = r.get_json()["message"]
    assert message["body"] == "" and message["attachments"] == [att]
    for user in (alice, bob, carol):
        assert fetch(client, user, aid) == 200
    thumb = client.get(f"/v1/attachments/{aid}/thumbnail", headers=stranger.headers)
    assert fetch(client, stranger, aid) == 404 and thumb.status_code == 404
    assert fetch(client, stranger, aid + 10_000_000) == 404
    # A removed member loses access; the others keep it.
    client.delete(f"/v1/conversations/{gid}/members/{carol.id}", headers=alice.headers)
    assert fetch(client, carol, aid) == 404
    assert fetch(client, bob, aid) == 200
    # Deleting the message ends the members' access; the uploader keeps it.
    client.delete(
        f"/v1/conversations/{gid}/messages/{message['seq']}", headers=alice.headers
    )
    assert fetch(client, bob, aid) == 404
    assert fetch(client, alice, aid) == 200


def test_someone_elses_attachment_cannot_be_sent(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    hers = uploaded(client, alice, b"secret", "text/plain", "s.txt")
    r = send_with(client, bob, cid, [hers["id"]], "look")
    assert r.status_code == 422
    assert "attachment_ids" in r.get_json()["error"]["fields"]
    assert fetch(client, bob, hers["id"]) == 404
    r = send_with(client, bob, cid, [hers["id"] + 10_000_000], "look")
    assert r.status_code == 422
    # Eleven, or one twice: 422.
    mine = [
        uploaded(client, bob, bytes([i]), "text/plain", "n")["id"] for i in range(11)
    ]
    assert send_with(client, bob, cid, mine).status_code == 422
    assert send_with(client, bob, cid, [mine[0], mine[0]]).status_code == 422
    assert (
        client.get(f"/v1/conversations/{cid}/messages", headers=bob.headers).get_json()[
            "messages"
        ]
        == []
    )


def test_members_on_other_shards_and_databases_can_fetch(
    client: Any, make_user: Any, chat: Any
) -> None:
    router = runtime.get().router
    users = [make_user() for _ in range(6)]
    owner = users[0]
    gid = chat.group(owner, users[1:])
    att = uploaded(client, owner, png_bytes(), "image/png", "p.png")
    assert router.dsn_of(att["id"]) in {router.dsn_of(u.id) for u in users} | {
        router.dsn_of(gid)
    }
    assert len({router.schema_of(u.id) for u in users}) > 1
    assert send_with(client, owner, gid, [att["id"]], "photo").status_code == 201
    for user in users:
        assert fetch(client, user, att["id"]) == 200
        events, _ = conftest_drain(client, user)
        [msg] = [e["message"] for e in events if e["type"] == "message"]
        assert msg["attachments"] == [att]


def conftest_drain(client: Any, user: User) -> tuple[list[dict[str, Any]], str]:
    r = client.get("/v1/events?after=0&timeout=0&limit=500", headers=user.headers)
    assert r.status_code == 200
    return r.get_json()["events"], r.get_json()["cursor"]


def test_an_edit_may_empty_the_body_of_a_message_with_attachments(
    client: Any, make_user: Any, chat: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    att = uploaded(client, alice, b"notes", "text/plain", "n.txt")
    assert send_with(client, alice, cid, [att["id"]], "see file").status_code == 201
    r = client.patch(
        f"/v1/conversations/{cid}/messages/1", headers=alice.headers, json={"body": ""}
    )
    assert r.status_code == 200
    assert r.get_json()["message"]["body"] == ""
    assert r.get_json()["message"]["attachments"] == [att]


# ---- the collector ---------------------------------------------------------------


def _age(attachment_id: int, hours: float) -> None:
    with runtime.get().router.on_user(attachment_id, "test_age") as cur:
        cur.run(
            "UPDATE {s}.attachments SET created_at = created_at - %s "
            "WHERE attachment_id = %s",
            (timedelta(hours=hours), attachment_id),
        )


def test_uploads_never_sent_are_removed_after_a_day(
    client: Any, make_user: Any, chat: Any, services: Any
) -> None:
    alice, bob = make_user(), make_user()
    cid = chat.direct(alice, bob)
    content = secrets.token_bytes(64)
    unsent = uploaded(client, alice, content, "application/octet-stream", "u")
    recent = uploaded(client, alice, secrets.token_bytes(64), "text/plain", "r")
    sent = uploaded(client, alice, secrets.token_bytes(64), "text/plain", "s")
    deleted = uploaded(client, alice, secrets.token_bytes(64), "text/plain", "d")
    assert send_with(client, alice, cid, [sent["id"]], "kept").status_code == 201
    assert send_with(client, alice, cid, [deleted["id"]], "gone").status_code == 201
    client.delete(f"/v1/conversations/{cid}/messages/2", headers=alice.headers)
    for old in (unsent, sent, deleted):
        _age(old["id"], 25)
    _age(recent["id"], 23)
    blobs = runtime.get().blobs
    # The sends linked sent and deleted an hour ago or less: left alone for now.
    removed = attachments.collect(runtime.get(), blob_grace_secs=0)
    assert removed == 1
    assert fetch(client, alice, unsent["id"]) == 404
    assert not blobs.exists(unsent["sha256"])
    assert fetch(client, alice, recent["id"]) == 200
    with runtime.get().router.on_user(deleted["id"], "test_age") as cur:
        cur.run(
            "UPDATE {s}.attachment_links SET created_at = created_at - interval '2h'"
            " WHERE attachment_id = ANY(%s)",
            ([sent["id"], deleted["id"]],),
        )
    # The command does the same, with progress per shard.
    # Its own process, as an operator runs it (in-process it would install a
    # runtime of its own over the app's).
    done = subprocess.run(
        [sys.executable, "-m", "messenger", "gc-attachments"],
        env={**os.environ, **services.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "gc-attachments: 8/8 shards" in out
    assert "removed" in out
    assert fetch(client, alice, deleted["id"]) == 404  # its message was deleted
    assert fetch(client, bob, sent["id"]) == 200  # a live message carries it
    assert blobs.exists(sent["sha256"])


def test_bytes_shared_by_two_uploads_stay_while_one_remains(
    client: Any, make_user: Any
) -> None:
    alice, bob = make_user(), make_user()
    data = secrets.token_bytes(100)
    first = uploaded(client, alice, data, "text/plain", "a")
    second = uploaded(client, bob, data, "text/plain", "b")
    assert first["sha256"] == second["sha256"]
    _age(first["id"], 30)
    attachments.collect(runtime.get(), blob_grace_secs=0)
    assert fetch(client, alice, first["id"]) == 404
    r = client.get(f"/v1/attachments/{second['id']}", headers=bob.headers)
    assert r.status_code == 200 and r.data == data


def test_an_upload_cut_short_is_a_400_and_leaves_nothing(
    client: Any, make_user: Any
) -> None:
    alice = make_user()
    r = client.post(
        "/v1/attachments?filename=cut.bin",
        headers={**alice.headers, "Content-Type": "application/octet-stream"},
        input_stream=io.BytesIO(b"only the start"),
        # As gunicorn hands over a client that hung up mid-body: its stream just
        # ends, fewer bytes than promised (werkzeug does not count them then).
        environ_overrides={"CONTENT_LENGTH": "100000", "wsgi.input_terminated": True},
    )
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["code"] == "bad_request"
    assert list(runtime.get().blobs.spool_dir().iterdir()) == []
