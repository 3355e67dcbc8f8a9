"""``open_store(uri)``: the one entry point that turns a URI into an :class:`ObjectStore`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from storage.base import ObjectStore
from storage.errors import InvalidURIError
from storage.local import LocalStore
from storage.s3 import S3Store, parse_s3_uri


def open_store(uri: str | os.PathLike[str], *, read_only: bool = False, **options: Any) -> ObjectStore:
    """Open the store at ``uri``.

    * ``s3://bucket`` or ``s3://bucket/prefix`` -> :class:`storage.s3.S3Store` (standard AWS
      configuration; ``AWS_ENDPOINT_URL`` for S3-compatible endpoints);
    * ``file:///abs/dir`` (or ``file://localhost/abs/dir``) or a plain path (relative paths
      are taken from the current directory) -> :class:`storage.local.LocalStore`.

    ``read_only=True`` is for sources: every ``put`` is refused. ``options`` go to the
    backend's constructor (e.g. ``max_attempts=``, ``page_size=`` for S3, ``durable=`` locally).
    """
    if isinstance(uri, os.PathLike):
        return LocalStore(uri, read_only=read_only, **options)
    if not isinstance(uri, str) or not uri:
        raise InvalidURIError(f"store URI must be a non-empty string, got {uri!r}")
    if "\x00" in uri:
        raise InvalidURIError("store URI contains NUL")
    scheme, sep, _ = uri.partition("://")
    if not sep:
        if uri.lower().startswith("file:"):  # RFC 8089 short form: file:/abs/dir
            return _file_store(uri, read_only, options)
        return LocalStore(Path(uri), read_only=read_only, **options)
    scheme = scheme.lower()
    if scheme == "s3":
        bucket, prefix = parse_s3_uri("s3://" + uri[len("s3://") :])
        return S3Store(bucket, prefix, read_only=read_only, **options)
    if scheme == "file":
        return _file_store(uri, read_only, options)
    raise InvalidURIError(f"unsupported store URI scheme {scheme!r} (use s3://, file:// or a path)")


def _file_store(uri: str, read_only: bool, options: dict[str, Any]) -> LocalStore:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise InvalidURIError(f"file URI with a remote host (use file:///abs/dir): {uri!r}")
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise InvalidURIError(f"file URI needs an absolute path (file:///abs/dir): {uri!r}")
    return LocalStore(Path(path), read_only=read_only, **options)
