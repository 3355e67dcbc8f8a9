"""Object stores: one suite over both backends (local folder, S3 over HTTP to moto), plus
hostile keys, retries, error hygiene and the S3-specific paths (pages, multipart)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from s3server import SECRET_KEY

from storage.base import ObjectStore, stores_overlap
from storage.errors import (
    InvalidKeyError,
    InvalidMetadataError,
    InvalidURIError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    ReadOnlyStoreError,
    StoreAccessError,
)
from storage.keys import MAX_KEY_BYTES, validate_key
from storage.local import LocalStore
from storage.s3 import S3Store
from storage.stores import open_store

MiB = 1 << 20
MakeStore = Callable[..., Any]

HOSTILE_KEYS = [
    "../x",
    "/etc/passwd",
    "a/../../b",
    "a\x00b",
    "k" * 2048,
    "",
    "a//b",
    "a/./b",
    "..",
    "a\\..\\b",
    "line\nbreak",
    "del\x7f",
    "trailing/",
]


def md5_etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


# ---------------------------------------------------------------- both backends


def test_put_get_head_exists_roundtrip(make_store: MakeStore) -> None:
    store = make_store()
    assert isinstance(store, ObjectStore)
    data = os.urandom(1000)
    assert not store.exists("lane3/cam1/f001.jpg")
    store.put("lane3/cam1/f001.jpg", data)
    assert store.exists("lane3/cam1/f001.jpg")
    assert store.get("lane3/cam1/f001.jpg") == data
    info = store.head("lane3/cam1/f001.jpg")
    assert info.size == len(data)
    assert info.etag == md5_etag(data)  # S3's single-part ETag format on both backends
    assert info.metadata == {}


def test_overwrite_replaces_content_and_metadata(make_store: MakeStore) -> None:
    store = make_store()
    store.put("out/x.png", b"old", metadata={"run-id": "one"})
    store.put("out/x.png", b"new")
    assert store.get("out/x.png") == b"new"
    assert store.head("out/x.png").metadata == {}
    assert list(store.list()) == ["out/x.png"]  # no temp or metadata files listed


def test_metadata_roundtrip(make_store: MakeStore) -> None:
    store = make_store()
    meta = {"source-key": "lane%203/f%C3%A9.jpg", "source-etag": '"abc"', "config-hash": "0f1e"}
    store.put("restored/f.png", b"png bytes", metadata=meta)
    assert store.head("restored/f.png").metadata == meta


@pytest.mark.parametrize(
    "meta",
    [{"Upper": "x"}, {"ok": "caf\u00e9"}, {"ok": "line\nbreak"}, {"big": "x" * 3000}, {"": "x"}],
)
def test_bad_metadata_is_rejected_before_writing(make_store: MakeStore, meta: dict) -> None:
    store = make_store()
    with pytest.raises(InvalidMetadataError):
        store.put("k.png", b"x", metadata=meta)
    assert not store.exists("k.png")


def test_missing_objects(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(ObjectNotFoundError, match=re.escape("nope/missing.png")):
        store.get("nope/missing.png")
    with pytest.raises(ObjectNotFoundError, match=re.escape("nope/missing.png")):
        store.head("nope/missing.png")
    assert store.exists("nope/missing.png") is False


def test_get_max_bytes(make_store: MakeStore) -> None:
    store = make_store()
    store.put("big.bin", b"x" * 100)
    assert store.get("big.bin", max_bytes=100) == b"x" * 100
    with pytest.raises(ObjectTooLargeError, match=re.escape("big.bin")):
        store.get("big.bin", max_bytes=99)


LISTING_KEYS = ["a.txt", "a/b", "a-b", "B", "a/c/d", "\u00e9.png", "z", "a/c.png", "ab/x"]


def test_list_order_and_prefix_semantics(make_store: MakeStore) -> None:
    store = make_store(page_size=3)
    for key in LISTING_KEYS:
        store.put(key, b"")
    utf8_order = sorted(LISTING_KEYS, key=lambda k: k.encode("utf-8"))
    assert list(store.list()) == utf8_order
    assert list(store.list("a/")) == ["a/b", "a/c.png", "a/c/d"]
    assert list(store.list("a")) == ["a-b", "a.txt", "a/b", "a/c.png", "a/c/d", "ab/x"]
    assert list(store.list("a/c")) == ["a/c.png", "a/c/d"]
    assert list(store.list("nothing/")) == []
    assert list(store.list_dirs()) == ["a/", "ab/"]
    assert list(store.list_dirs("a/")) == ["a/c/"]


def test_list_is_lazy_iterator(make_store: MakeStore) -> None:
    store = make_store(page_size=2)
    for i in range(5):
        store.put(f"k/{i}", b"")
    it = store.list("k/")
    assert isinstance(it, Iterator)
    assert next(it) == "k/0"
    assert list(it) == ["k/1", "k/2", "k/3", "k/4"]


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=lambda k: repr(k)[:20])
def test_hostile_keys_rejected_everywhere(make_store: MakeStore, key: str) -> None:
    store = make_store()
    with pytest.raises(InvalidKeyError):
        store.put(key, b"evil")
    for op in (store.get, store.head, store.exists):
        with pytest.raises(InvalidKeyError):
            op(key)
    if key not in ("", "trailing/"):  # "" and "x/" are valid listing prefixes
        with pytest.raises(InvalidKeyError):
            store.list(key)
    assert list(store.list()) == []


def test_read_only_store_never_writes(make_store: MakeStore) -> None:
    make_store("src").put("f.png", b"frame")
    source = make_store("src", read_only=True)
    with pytest.raises(ReadOnlyStoreError, match=re.escape("f2.png")):
        source.put("f2.png", b"x")
    with pytest.raises(ReadOnlyStoreError):
        source.put("f.png", b"overwrite")
    assert list(source.list()) == ["f.png"]
    assert source.get("f.png") == b"frame"


def test_multipart_sized_object_roundtrip(make_store: MakeStore) -> None:
    """11 MiB with a 5 MiB threshold: a 3-part multipart upload on S3, one file locally."""
    store = make_store(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    data = os.urandom(11 * MiB)
    meta = {"config-hash": "abc123"}
    store.put("big/frame.png", data, metadata=meta)
    assert store.get("big/frame.png") == data
    info = store.head("big/frame.png")
    assert info.size == len(data)
    assert info.metadata == meta
    if isinstance(store, S3Store):
        assert info.etag.endswith('-3"'), info.etag  # S3's multipart ETag: <md5>-<parts>
    else:
        assert info.etag == md5_etag(data)


# ---------------------------------------------------------------- key rules


def test_key_rules_accept_ordinary_keys() -> None:
    for key in ["a", "lane3/cam1/f001.jpg", "x..y/z", ".hidden/f", "caf\u00e9 1.png", "k" * 1024]:
        assert validate_key(key) == key
    with pytest.raises(InvalidKeyError, match="bytes"):
        validate_key("\u00e9" * (MAX_KEY_BYTES // 2 + 1))  # 2 bytes each in UTF-8
    with pytest.raises(InvalidKeyError, match="lone surrogate"):
        validate_key("bad\udcff")
    with pytest.raises(InvalidKeyError, match="must be str"):
        validate_key(b"bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- local specifics


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_local_hostile_keys_write_nothing_outside_root(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_bytes(b"keep")
    root = tmp_path / "deep" / "root"
    store = LocalStore(root)
    store.put("ok.png", b"fine")
    before = snapshot(tmp_path)
    passwd = Path("/etc/passwd")
    passwd_before = passwd.read_bytes() if passwd.exists() else None
    for key in [*HOSTILE_KEYS, "../../x", "../root2/x", "a/../../../../tmp/x"]:
        with pytest.raises(InvalidKeyError):
            store.put(key, b"evil")
    assert snapshot(tmp_path) == before
    assert not any(p.name in ("x", "b") for p in tmp_path.rglob("*"))
    if passwd_before is not None:
        assert passwd.read_bytes() == passwd_before


def test_local_symlink_out_of_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    root = tmp_path / "root"
    root.mkdir()
    (root / "evil").symlink_to(outside, target_is_directory=True)
    (root / "evil-file.png").symlink_to(outside / "secret.txt")
    store = LocalStore(root)
    with pytest.raises(InvalidKeyError, match="outside the store root"):
        store.put("evil/new.png", b"x")
    with pytest.raises(InvalidKeyError, match="outside the store root"):
        store.get("evil/secret.txt")
    with pytest.raises(InvalidKeyError, match="outside the store root"):
        store.get("evil-file.png")
    assert list(store.list()) == []
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_local_reserved_names_and_no_temp_leftovers(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidKeyError, match="reserved"):
        store.put(".crs-meta/x.json", b"{}")
    for i in range(3):
        store.put("d/f.png", bytes([i]) * 10)
    assert sorted(os.listdir(tmp_path / "root" / "d")) == ["f.png"]
    assert list(store.list()) == ["d/f.png"]


def test_local_put_failure_leaves_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("f.png", b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreAccessError, match=re.escape("f.png")):
        store.put("f.png", b"new")
    monkeypatch.undo()
    assert store.get("f.png") == b"old"
    assert sorted(os.listdir(tmp_path / "root")) == [".crs-meta", "f.png"]


def test_local_metadata_ignored_when_file_changed_outside(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "root")
    store.put("f.png", b"v1", metadata={"config-hash": "aaa"})
    (tmp_path / "root" / "f.png").write_bytes(b"v2 written by someone else")
    assert store.head("f.png").metadata == {}


def test_local_read_only_missing_root(tmp_path: Path) -> None:
    with pytest.raises(StoreAccessError, match="does not exist"):
        open_store(tmp_path / "absent", read_only=True)
    assert not (tmp_path / "absent").exists()


# ---------------------------------------------------------------- URIs


def test_open_store_uris(tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    local = open_store(f"file://{tmp_path}/a%20b")
    assert isinstance(local, LocalStore) and local.root == tmp_path / "a b"
    assert local.uri == (tmp_path / "a b").as_uri()
    monkeypatch.chdir(tmp_path)
    assert open_store("rel/dir").root == tmp_path / "rel" / "dir"
    assert open_store("file://localhost" + str(tmp_path)).root == tmp_path
    s3 = open_store(f"s3://{s3_bucket}/in/frames/")
    assert isinstance(s3, S3Store) and s3.uri == f"s3://{s3_bucket}/in/frames"
    assert open_store(f"s3://{s3_bucket}").uri == f"s3://{s3_bucket}"
    assert open_store(f"file:{tmp_path}").root == tmp_path
    bad_uris = ["gs://b/x", "file://host/x", "file:rel", "file://rel", "s3://", "s3://Bad_Bucket/x"]
    for bad in bad_uris:
        with pytest.raises(InvalidURIError):
            open_store(bad)
    with pytest.raises(InvalidKeyError):
        open_store(f"s3://{s3_bucket}/a/../c")


def test_stores_overlap(tmp_path: Path, s3_bucket: str) -> None:
    b = s3_bucket
    assert stores_overlap(open_store(f"s3://{b}/in"), open_store(f"s3://{b}/in/out"))
    assert stores_overlap(open_store(f"s3://{b}"), open_store(f"s3://{b}/x"))
    assert not stores_overlap(open_store(f"s3://{b}/in"), open_store(f"s3://{b}/inbox"))
    assert stores_overlap(open_store(tmp_path / "a"), open_store(tmp_path / "a" / "b"))
    assert not stores_overlap(open_store(tmp_path / "a"), open_store(tmp_path / "ab"))


# ---------------------------------------------------------------- S3 specifics


def count_calls(client: Any, event: str) -> dict[str, int]:
    calls = {"n": 0}

    def handler(**kwargs: Any) -> None:
        calls["n"] += 1

    client.meta.events.register(event, handler)
    return calls


def test_s3_uses_aws_endpoint_url(s3_env: Any, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/p")
    assert store.client.meta.endpoint_url == s3_env.endpoint
    assert s3_env.endpoint.startswith("http://127.0.0.1:")
    store.put("x", b"1")
    raw = boto3.client("s3").get_object(Bucket=s3_bucket, Key="p/x")["Body"].read()
    assert raw == b"1"


def test_s3_listing_streams_three_or_more_pages(s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/root", page_size=4)
    keys = [f"frames/{i:03d}.png" for i in range(11)]
    for key in keys:
        store.put(key, b"")
    calls = count_calls(store.client, "before-call.s3.ListObjectsV2")
    it = store.list("frames/")
    assert calls["n"] == 0  # nothing requested before iteration starts
    first = [next(it) for _ in range(4)]
    assert calls["n"] == 1  # one page so far
    assert first + list(it) == keys
    assert calls["n"] == 3  # 11 keys / 4 per page


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def inject_errors(client: Any, status: int, code: str, first: int | None) -> dict[str, Any]:
    """Answer the next ``first`` requests (all if None) with an S3 error, without sending.

    Returns a live dict: ``n`` counts requests, ``left`` is how many failures remain."""
    calls: dict[str, Any] = {"n": 0, "left": first}
    body = (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        f"<Message>injected {code}</Message></Error>"
    ).encode()

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        calls["n"] += 1
        if calls["left"] is None or calls["left"] > 0:
            if calls["left"] is not None:
                calls["left"] -= 1
            headers = {"Content-Type": "application/xml"}
            return AWSResponse(request.url, status, headers, _Body(body))
        return None

    client.meta.events.register("before-send.s3.*", handler)
    return calls


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep botocore's retry logic, shorten its sleeps (up to 1-2 s each) to 10 ms."""
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0.01)


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_s3_transient_errors_are_retried(
    s3_bucket: str, fast_backoff: None, status: int, code: str
) -> None:
    store = open_store(f"s3://{s3_bucket}/r", retry_mode="standard", max_attempts=4)
    calls = inject_errors(store.client, status, code, first=2)
    store.put("f.png", b"payload")
    assert calls["n"] == 3  # two injected failures, then the real request
    calls["left"] = 2
    assert store.get("f.png") == b"payload"
    assert calls["n"] == 6
    calls["left"] = 3
    assert list(store.list()) == ["f.png"]
    assert calls["n"] == 10


def test_s3_adaptive_mode_retries_throttling(s3_bucket: str, fast_backoff: None) -> None:
    """Adaptive mode also rate-limits the client after throttling (real sleeps): one call."""
    store = open_store(f"s3://{s3_bucket}/r", retry_mode="adaptive", max_attempts=3)
    assert store.retry_mode == "adaptive"
    calls = inject_errors(store.client, 503, "SlowDown", first=1)
    store.put("f.png", b"payload")
    assert calls["n"] == 2


def test_s3_retry_settings_from_environment(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch, fast_backoff: None
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_RETRY_MODE", "legacy")  # not bounded the same way: replaced
    store = open_store(f"s3://{s3_bucket}/r")
    assert (store.retry_mode, store.max_attempts) == ("standard", 2)
    calls = inject_errors(store.client, 500, "InternalError", first=None)
    with pytest.raises(StoreAccessError, match="2 attempt"):
        store.head("k")
    assert calls["n"] == 2


def test_s3_transient_errors_during_multipart_are_retried(s3_bucket: str, fast_backoff: None) -> None:
    store = open_store(
        f"s3://{s3_bucket}/r", multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB
    )
    calls = inject_errors(store.client, 503, "SlowDown", first=2)
    data = os.urandom(11 * MiB)
    store.put("big.png", data)
    assert calls["n"] >= 2 + 5  # create + 3 parts + complete, plus the injected failures
    assert store.get("big.png") == data


def test_s3_persistent_error_names_key_without_secrets(s3_bucket: str, fast_backoff: None) -> None:
    store = open_store(f"s3://{s3_bucket}/r", max_attempts=3)
    calls = inject_errors(store.client, 503, "SlowDown", first=None)
    with pytest.raises(StoreAccessError) as info:
        store.get("lane3/f001.jpg")
    message = str(info.value)
    assert calls["n"] == 3  # bounded attempts
    assert "lane3/f001.jpg" in message and f"s3://{s3_bucket}/r" in message
    assert "SlowDown" in message and "3 attempt" in message
    assert info.value.key == "lane3/f001.jpg" and info.value.code == "SlowDown"
    assert SECRET_KEY not in message and SECRET_KEY not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_s3_access_denied_is_not_retried(s3_bucket: str, fast_backoff: None) -> None:
    store = open_store(f"s3://{s3_bucket}/r", max_attempts=5)
    calls = inject_errors(store.client, 403, "AccessDenied", first=None)
    for op in (lambda: store.put("x/y.png", b"1"), lambda: list(store.list("x/"))):
        with pytest.raises(StoreAccessError, match="AccessDenied") as info:
            op()
        assert SECRET_KEY not in str(info.value)
    assert calls["n"] == 2  # one attempt each


def test_s3_missing_bucket_and_unreachable_endpoint(
    s3_env: Any, fast_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store("s3://no-such-bucket-here/p")
    with pytest.raises(StoreAccessError, match="NoSuchBucket"):
        store.put("a.png", b"x")
    from s3server import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    dead = open_store("s3://some-bucket/p", max_attempts=2, connect_timeout=1)
    with pytest.raises(StoreAccessError, match=re.escape("a.png")) as info:
        dead.get("a.png")
    assert SECRET_KEY not in str(info.value)


def test_s3_error_text_is_scrubbed_of_credentials(s3_bucket: str) -> None:
    """Defence in depth: even a library message quoting the secret is masked."""
    from botocore.exceptions import BotoCoreError

    class Leaky(BotoCoreError):
        fmt = "signing failed with {secret}"

    store = open_store(f"s3://{s3_bucket}/r")
    error = store._fail("PutObject", "k.png", Leaky(secret=SECRET_KEY))
    assert isinstance(error, StoreAccessError)
    assert SECRET_KEY not in str(error) and "***" in str(error) and "'k.png'" in str(error)
