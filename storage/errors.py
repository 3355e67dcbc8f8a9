"""Typed errors of the storage layer.

Two families:

* :class:`StorageError` — problems with keys, URIs, stores and the backend (S3 or the local
  folder). Messages name the store URI and the key, never credentials.
* :class:`FrameError` — a frame (or one of its sidecars) cannot be used. Each carries a short
  machine-friendly ``reason`` (e.g. ``"truncated_image"``) that the pipeline writes into a
  quarantine row, so one bad frame never stops a batch.
"""

from __future__ import annotations

from typing import Any


def _rebuild(cls: type[Exception], message: str, state: dict[str, Any]) -> Exception:
    """Unpickle an error without calling its ``__init__`` (whose signature differs per class)."""
    obj = cls.__new__(cls)
    Exception.__init__(obj, message)
    obj.__dict__.update(state)
    return obj


class StorageError(Exception):
    """Base class of every storage-layer error that is not about frame content.

    Picklable whatever its constructor takes (message and attributes travel as they are), so an
    error raised in a Ray worker reaches the driver as itself, not as ``UnserializableException``.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), str(self), dict(self.__dict__))


class InvalidKeyError(StorageError, ValueError):
    """A key or prefix breaks the key rules (``..``, absolute, control characters, length...)."""

    def __init__(self, key: object, problem: str) -> None:
        shown = repr(key)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"invalid key {shown}: {problem}")
        self.key = key
        self.problem = problem


class InvalidMetadataError(StorageError, ValueError):
    """User metadata that S3 could not store verbatim (non-ASCII, upper case, too large)."""


class InvalidURIError(StorageError, ValueError):
    """A store URI that :func:`storage.open_store` does not understand."""


class ObjectNotFoundError(StorageError, LookupError):
    """The key does not exist in the store."""

    def __init__(self, uri: str, key: str) -> None:
        super().__init__(f"no object {key!r} in {uri}")
        self.uri = uri
        self.key = key


class ObjectTooLargeError(StorageError):
    """An object is larger than the caller's ``max_bytes`` for :meth:`get`."""

    def __init__(self, uri: str, key: str, size: int, max_bytes: int) -> None:
        super().__init__(f"object {key!r} in {uri} is {size} bytes, over the {max_bytes} limit")
        self.uri = uri
        self.key = key
        self.size = size
        self.max_bytes = max_bytes


class ReadOnlyStoreError(StorageError, PermissionError):
    """A write was attempted on a store opened with ``read_only=True`` (a source store)."""


class StoreAccessError(StorageError):
    """The backend failed persistently (after retries) or refused access.

    ``operation`` is e.g. ``"GetObject"``, ``key`` the store-relative key (``None`` for
    listings), ``code`` the backend error code when there is one (``"SlowDown"``, ``"403"``...).
    """

    def __init__(
        self, message: str, *, operation: str, key: str | None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.key = key
        self.code = code


class PreconditionFailedError(StoreAccessError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class OverlappingStoresError(StorageError, ValueError):
    """Source and destination overlap: outputs would be rediscovered as inputs."""


class LedgerError(StorageError):
    """A ledger entry cannot be written (e.g. an output it names does not exist)."""


class FrameError(Exception):
    """A frame or sidecar cannot be used. ``reason`` is a short token for quarantine rows."""

    reason: str = "frame_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), str(self), dict(self.__dict__))


class NotAnImageError(FrameError):
    """Empty, or not a PNG/JPEG/WebP image at all (reason ``not_an_image`` or ``empty_file``)."""

    reason = "not_an_image"


class CorruptImageError(FrameError):
    """Recognised as an image but the data is broken (bad CRC, bad stream, bad EXIF)."""

    reason = "corrupt_image"


class TruncatedImageError(FrameError):
    """The file ends before the image data does."""

    reason = "truncated_image"


class ImageTooLargeError(FrameError):
    """Width x height over the pixel limit (decompression-bomb guard), checked before decoding."""

    reason = "image_too_large"


class MaskSizeMismatchError(FrameError):
    """The mask's (H, W) differs from its frame's."""

    reason = "mask_size_mismatch"


class KernelFileError(FrameError):
    """A ``.kernel.npy`` sidecar that is not a finite, non-negative, sum-1, 2-D array."""

    reason = "bad_kernel"


class TruthSizeMismatchError(FrameError):
    """The ``.sharp.png`` ground truth's (H, W) differs from its frame's."""

    reason = "truth_size_mismatch"
