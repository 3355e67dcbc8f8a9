"""The ``ObjectStore`` protocol shared by the local and the S3 backend."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from storage.errors import InvalidMetadataError

# S3 sends user metadata as HTTP headers (x-amz-meta-<name>) and lower-cases the names; we
# accept only what round-trips verbatim on every backend.
_META_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")
MAX_METADATA_BYTES = 2048  # S3's limit for all user-defined metadata of one object


@dataclass(frozen=True)
class ObjectInfo:
    """What :meth:`ObjectStore.head` returns.

    ``etag`` is S3's ETag verbatim (with its double quotes; ``"<md5>-<parts>"`` after a
    multipart upload); the local store uses ``"<md5 of the content>"``, the S3 single-part
    format. ``metadata`` is the user metadata given to :meth:`ObjectStore.put`.
    """

    size: int
    etag: str
    metadata: dict[str, str] = field(default_factory=dict)


def validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """Check user metadata: names ``[a-z0-9][a-z0-9_-]*``, printable-ASCII values, <= 2 KiB.

    Non-ASCII values (e.g. a UTF-8 source key) must be percent-encoded by the caller
    (:func:`urllib.parse.quote`); :func:`storage.ledger.output_metadata` does so.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(f"metadata must be a mapping, not {type(metadata).__name__}")
    total = 0
    out: dict[str, str] = {}
    for name, value in metadata.items():
        if not isinstance(name, str) or not _META_NAME_RE.match(name):
            raise InvalidMetadataError(
                f"metadata name {name!r}: use lower-case ASCII letters, digits, '-' and '_'"
            )
        if not isinstance(value, str):
            raise InvalidMetadataError(f"metadata {name!r}: value must be str")
        if any(not (0x20 <= ord(ch) <= 0x7E) for ch in value):
            raise InvalidMetadataError(
                f"metadata {name!r}: value must be printable ASCII (percent-encode it)"
            )
        total += len(name) + len(value)
        out[name] = value
    if total > MAX_METADATA_BYTES:
        raise InvalidMetadataError(f"metadata is {total} bytes, over S3's {MAX_METADATA_BYTES}")
    return out


@runtime_checkable
class ObjectStore(Protocol):
    """A flat key -> bytes store rooted at :attr:`uri` (a local folder or an S3 prefix).

    Keys are relative to the root and obey :mod:`storage.keys`. Only report retention deletes
    (old ``reports/<run-id>/`` folders), and a store opened ``read_only`` (sources) never writes.
    """

    @property
    def uri(self) -> str:
        """Canonical URI of the root (``file:///abs/dir`` or ``s3://bucket/prefix``)."""
        ...

    @property
    def read_only(self) -> bool:
        """True when :meth:`put` is refused."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Yield keys under ``prefix`` (S3 semantics) lazily, in UTF-8 byte order."""
        ...

    def list_dirs(self, prefix: str = "") -> Iterator[str]:
        """Yield the immediate sub-folders of ``prefix`` (``""`` or ending in ``/``), as keys
        ending in ``/``, in order (S3's ``Delimiter='/'`` common prefixes)."""
        ...

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        """Return the object's bytes; :class:`ObjectNotFoundError` if absent."""
        ...

    def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None) -> None:
        """Write atomically (readers see the old or the new object, never a part)."""
        ...

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag and user metadata; :class:`ObjectNotFoundError` if absent."""
        ...

    def exists(self, key: str) -> bool:
        """True if the object exists."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object (no error when it is already gone)."""
        ...


def folder_uri(uri: str) -> str:
    """``uri`` with exactly one trailing ``/``, for prefix comparisons."""
    return uri.rstrip("/") + "/"


def stores_overlap(a: ObjectStore, b: ObjectStore) -> bool:
    """True if one store's root lies inside the other's (or they are the same).

    ``s3://b/in`` and ``s3://b/inbox`` do not overlap; ``s3://b/in`` and ``s3://b/in/out`` do.
    """
    ua, ub = folder_uri(a.uri), folder_uri(b.uri)
    return ua.startswith(ub) or ub.startswith(ua)
