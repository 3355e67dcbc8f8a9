"""S3 backend (AWS S3 or any S3-compatible endpoint: MinIO, Ceph RGW) through boto3.

Configuration is the standard AWS one: credentials and region from the environment, the shared
config/credentials files or ``AWS_PROFILE`` (or an instance role); ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) points at an S3-compatible endpoint. Retry mode and attempt count come
from the arguments, else ``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` (or the profile), else
``standard`` with 5 attempts; ``legacy`` is replaced by ``standard``.
"""

from __future__ import annotations

import io
import logging
import mimetypes
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import boto3
import botocore.session
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    NoCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from storage.base import ObjectInfo, validate_metadata
from storage.errors import (
    InvalidURIError,
    ObjectNotFoundError,
    ObjectTooLargeError,
    PreconditionFailedError,
    ReadOnlyStoreError,
    StoreAccessError,
)
from storage.keys import validate_folder, validate_key, validate_prefix

log = logging.getLogger(__name__)
MiB = 1 << 20
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_T = TypeVar("_T")


_shared_loader: Any = None
_loader_lock = threading.Lock()


def _botocore_session(profile: str | None) -> botocore.session.Session:
    """A fresh botocore session (fresh credential/config resolution) that shares the parsed
    service-model files with earlier ones: they are read-only, and parsing them is most of
    the cost of creating a client."""
    global _shared_loader
    session = botocore.session.Session(profile=profile)
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _shared_loader)
    return session


class S3Store:
    """Objects under ``s3://bucket/prefix``.

    * ``list`` streams ``list_objects_v2`` pages through boto3's paginator (``page_size`` keys
      per request) and never holds more than one page.
    * ``put`` is one ``PutObject`` below ``multipart_threshold`` and a multipart upload above
      (``multipart_chunksize`` parts); both are atomic on S3. User metadata goes to
      ``x-amz-meta-*``.
    * Every request is retried by botocore (``standard`` or ``adaptive`` mode, bounded
      attempts) and bounded by connect/read timeouts. A failure that survives the retries is
      a :class:`StoreAccessError` naming the operation, the store URI and the key, never
      credentials.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        read_only: bool = False,
        client: Any | None = None,
        profile_name: str | None = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        retry_mode: str | None = None,
        max_attempts: int | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        multipart_threshold: int = 64 * MiB,
        multipart_chunksize: int = 16 * MiB,
        max_concurrency: int = 8,
        page_size: int = 1000,
        addressing_style: str | None = None,
    ) -> None:
        if not _BUCKET_RE.match(bucket):
            raise InvalidURIError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be in 1..1000 (S3's MaxKeys limit)")
        if multipart_chunksize < 5 * MiB:
            raise ValueError("multipart_chunksize must be >= 5 MiB (S3's minimum part size)")
        self._bucket = bucket
        self._prefix = prefix
        self._root = prefix + "/" if prefix else ""
        self._read_only = read_only
        self._page_size = page_size
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
        )
        self._multipart_threshold = multipart_threshold
        self._session: botocore.session.Session | None = None
        if client is not None:  # caller-configured client: its own retry settings apply
            self._client = client
            self._attempts = max_attempts or 1
            self.retry_mode = retry_mode or "caller's client"
            return
        bs = _botocore_session(profile_name)
        mode = retry_mode or bs.get_config_variable("retry_mode") or "standard"
        if retry_mode is not None and mode not in ("standard", "adaptive"):
            raise ValueError("retry_mode must be 'standard' or 'adaptive'")
        if mode not in ("standard", "adaptive"):
            mode = "standard"
        attempts = int(max_attempts or bs.get_config_variable("max_attempts") or 5)
        if not 1 <= attempts <= 20:
            raise ValueError("max_attempts must be in 1..20")
        config = Config(
            retries={"mode": mode, "total_max_attempts": attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(10, 2 * max_concurrency),
            user_agent_extra="checkout-restore",
            s3={"addressing_style": addressing_style} if addressing_style else None,
        )
        self._session = bs
        self._client = boto3.session.Session(botocore_session=bs).client(
            "s3", config=config, endpoint_url=endpoint_url, region_name=region_name
        )
        self._attempts = attempts
        self.retry_mode = mode

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, read_only={self._read_only})"

    @property
    def uri(self) -> str:
        return f"s3://{self._bucket}/{self._prefix}" if self._prefix else f"s3://{self._bucket}"

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def client(self) -> Any:
        """The boto3 S3 client (e.g. to register botocore event hooks)."""
        return self._client

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def max_attempts(self) -> int:
        return self._attempts

    # ---------------------------------------------------------------- errors
    def _scrub(self, text: str) -> str:
        """Remove credential strings from an error text (defence in depth)."""
        if self._session is None:
            return text
        try:
            creds = self._session.get_credentials()
            frozen = creds.get_frozen_credentials() if creds is not None else None
        except Exception:  # resolving credentials must never mask the real error
            return text
        if frozen is not None:
            for secret in (frozen.secret_key, frozen.token):
                if secret:
                    text = text.replace(secret, "***")
        return text

    def _fail(self, op: str, key: str | None, exc: Exception) -> Exception:
        where = f"{key!r} in {self.uri}" if key is not None else self.uri
        if isinstance(exc, ClientError):
            response = exc.response
            err = response.get("Error", {})
            meta = response.get("ResponseMetadata", {})
            code = str(err.get("Code") or meta.get("HTTPStatusCode") or "unknown")
            if key is not None and code in _NOT_FOUND:
                return ObjectNotFoundError(self.uri, key)
            status = meta.get("HTTPStatusCode", "?")
            tries = int(meta.get("RetryAttempts", 0)) + 1
            detail = f": {err['Message']}" if err.get("Message") else ""
            message = (
                f"S3 {op} of {where} failed with {code} (HTTP {status}) after {tries} "
                f"attempt(s){detail}"
            )
            return StoreAccessError(self._scrub(message), operation=op, key=key, code=code)
        if isinstance(exc, NoCredentialsError):
            message = f"S3 {op} of {where}: no AWS credentials found (environment, profile, role)"
            return StoreAccessError(message, operation=op, key=key, code="NoCredentials")
        message = f"S3 {op} of {where} failed: {type(exc).__name__}: {exc}"
        return StoreAccessError(self._scrub(message), operation=op, key=key)

    def _call(self, op: str, key: str | None, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._fail(op, key, exc) from None

    # ---------------------------------------------------------------- listing
    def list(self, prefix: str = "") -> Iterator[str]:
        prefix = validate_prefix(prefix)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[str]:
        return self._paged(prefix, "Contents", "Key")

    def list_dirs(self, prefix: str = "") -> Iterator[str]:
        prefix = validate_folder(prefix)
        return self._list_dirs(prefix)

    def _list_dirs(self, prefix: str) -> Iterator[str]:
        return self._paged(prefix, "CommonPrefixes", "Prefix", Delimiter="/")

    def list_etags(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        """``(key, ETag)`` of every object under ``prefix``: the listing already carries the ETags,
        so discovery needs no HEAD per frame (storage.ledger_index)."""
        prefix = validate_prefix(prefix)
        cut = len(self._root)
        return ((e["Key"][cut:], e["ETag"]) for e in self._entries(prefix, "Contents"))

    def _paged(self, prefix: str, field: str, name: str, **extra: str) -> Iterator[str]:
        """Stream `name` of each entry in `field` of ListObjectsV2 pages, one page held at a time."""
        cut = len(self._root)
        for entry in self._entries(prefix, field, **extra):
            yield entry[name][cut:]

    def _entries(self, prefix: str, field: str, **extra: str) -> Iterator[dict]:
        """The entries in `field` of ListObjectsV2 pages, one page held at a time."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket,
            Prefix=self._root + prefix,
            PaginationConfig={"PageSize": self._page_size},
            **extra,
        )
        it = iter(pages)
        while True:
            page = self._call("ListObjectsV2", prefix or None, lambda: next(it, None))
            if page is None:
                return
            entries = page.pop(field, ())
            del page
            yield from entries
            del entries  # release this page before the next request: one page at a time

    # ---------------------------------------------------------------- reads
    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        full = self._root + validate_key(key)
        # botocore retries the request; a body that breaks mid-stream is retried here.
        for attempt in range(1, self._attempts + 1):
            response = self._call(
                "GetObject", key, lambda: self._client.get_object(Bucket=self._bucket, Key=full)
            )
            body = response["Body"]
            size = int(response.get("ContentLength", -1))
            if max_bytes is not None and size > max_bytes:
                body.close()
                raise ObjectTooLargeError(self.uri, key, size, max_bytes)
            try:
                return body.read()
            except (IncompleteReadError, ReadTimeoutError, ResponseStreamingError) as exc:
                body.close()
                if attempt == self._attempts:
                    raise self._fail("GetObject", key, exc) from None
        raise AssertionError("unreachable")

    def head(self, key: str) -> ObjectInfo:
        full = self._root + validate_key(key)
        response = self._call(
            "HeadObject", key, lambda: self._client.head_object(Bucket=self._bucket, Key=full)
        )
        return ObjectInfo(
            size=int(response["ContentLength"]),
            etag=response["ETag"],
            metadata=dict(response.get("Metadata", {})),
        )

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    # ---------------------------------------------------------------- writes
    def check_key(self, key: str) -> None:
        """:class:`InvalidKeyError` if ``put(key)`` would refuse the key (prefix included)."""
        validate_key(self._root + validate_key(key))

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        if self._read_only:
            raise ReadOnlyStoreError(f"{self.uri} is read-only: refusing to write {key!r}")
        full = self._root + validate_key(key)
        meta = validate_metadata(metadata)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        extra = {
            "Metadata": meta,
            "ContentType": mimetypes.guess_type(key)[0] or "application/octet-stream",
        }
        if len(data) < self._multipart_threshold:
            self._call(
                "PutObject",
                key,
                lambda: self._client.put_object(Bucket=self._bucket, Key=full, Body=data, **extra),
            )
            return
        self._call(
            "MultipartUpload",
            key,
            lambda: self._client.upload_fileobj(
                io.BytesIO(data), self._bucket, full, ExtraArgs=extra, Config=self._transfer
            ),
        )

    def delete(self, key: str) -> None:
        """DeleteObject (missing is fine on S3)."""
        if self._read_only:
            raise ReadOnlyStoreError(f"{self.uri} is read-only: refusing to delete {key!r}")
        full = self._root + validate_key(key)
        self._call("DeleteObject", key, lambda: self._client.delete_object(Bucket=self._bucket, Key=full))

    def put_if(self, key: str, data: bytes, *, if_match: str | None) -> str:
        """Conditional put (the run lease) with S3 conditional writes: ``IfMatch=<etag>``, or
        ``IfNoneMatch='*'`` when ``if_match`` is None (create only). A lost race raises
        :class:`PreconditionFailedError` (HTTP 412; 409 for a concurrent conditional write).
        Returns the new ETag."""
        if self._read_only:
            raise ReadOnlyStoreError(f"{self.uri} is read-only: refusing to write {key!r}")
        full = self._root + validate_key(key)
        cond = {"IfNoneMatch": "*"} if if_match is None else {"IfMatch": if_match}
        try:
            response = self._call("PutObject", key, lambda: self._client.put_object(
                Bucket=self._bucket, Key=full, Body=bytes(data), ContentType="application/json", **cond))
            return str(response["ETag"])
        except StoreAccessError as exc:
            if exc.code in ("NotImplemented", "501"):  # an S3-compatible store without them
                log.warning("%s has no conditional writes: the run lease is best effort there", self.uri)
                self.put(key, data)
                return self.head(key).etag
            if exc.code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailedError(
                    str(exc), operation="PutObject", key=key, code=exc.code
                ) from None
            raise


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    if not uri.startswith("s3://"):
        raise InvalidURIError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise InvalidURIError(f"S3 URI without a bucket: {uri!r}")
    if "?" in uri or "#" in uri:
        raise InvalidURIError(f"S3 URI with a query or fragment: {uri!r}")
    return bucket, prefix.strip("/")
