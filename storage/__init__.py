"""Object storage layer: stores (local folder, S3), keys, frame codecs, sidecars, ledger, reports.

Entry point: :func:`open_store`. No torch model code lives here. The names below are loaded on
first use, so ``import storage.keys`` stays cheap (no boto3, pandas or Pillow import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CorruptImageError": "storage.errors",
    "FrameData": "storage.frames",
    "FrameError": "storage.errors",
    "FrameRef": "storage.sidecars",
    "ImageTooLargeError": "storage.errors",
    "InvalidKeyError": "storage.errors",
    "InvalidMetadataError": "storage.errors",
    "InvalidURIError": "storage.errors",
    "KernelFileError": "storage.errors",
    "LedgerEntry": "storage.ledger",
    "LedgerError": "storage.errors",
    "LocalStore": "storage.local",
    "MaskSizeMismatchError": "storage.errors",
    "NotAnImageError": "storage.errors",
    "ObjectInfo": "storage.base",
    "ObjectNotFoundError": "storage.errors",
    "ObjectStore": "storage.base",
    "ObjectTooLargeError": "storage.errors",
    "OverlappingStoresError": "storage.errors",
    "ReadOnlyStoreError": "storage.errors",
    "S3Store": "storage.s3",
    "StorageError": "storage.errors",
    "StoreAccessError": "storage.errors",
    "TruncatedImageError": "storage.errors",
    "TruthSizeMismatchError": "storage.errors",
    "classify": "storage.sidecars",
    "decode_frame": "storage.images",
    "decode_mask": "storage.images",
    "discover": "storage.sidecars",
    "encode_png": "storage.images",
    "kernel_npy_key": "storage.keys",
    "kernel_png": "storage.images",
    "kernel_png_key": "storage.keys",
    "ledger_key": "storage.keys",
    "list_runs": "storage.reports",
    "load_frame": "storage.frames",
    "load_frames_report": "storage.reports",
    "load_kernel": "storage.sidecars",
    "load_summaries": "storage.reports",
    "new_run_id": "storage.reports",
    "open_store": "storage.stores",
    "output_keys": "storage.keys",
    "output_metadata": "storage.ledger",
    "read_ledger": "storage.ledger",
    "record_done": "storage.ledger",
    "report_key": "storage.keys",
    "restored_key": "storage.keys",
    "run_started_at": "storage.reports",
    "save_kernel": "storage.sidecars",
    "stores_overlap": "storage.base",
    "validate_key": "storage.keys",
    "validate_metadata": "storage.base",
    "validate_prefix": "storage.keys",
    "write_frames_report": "storage.reports",
    "write_summary": "storage.reports",
}

__all__ = [
    "CorruptImageError",
    "FrameData",
    "FrameError",
    "FrameRef",
    "ImageTooLargeError",
    "InvalidKeyError",
    "InvalidMetadataError",
    "InvalidURIError",
    "KernelFileError",
    "LedgerEntry",
    "LedgerError",
    "LocalStore",
    "MaskSizeMismatchError",
    "NotAnImageError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectTooLargeError",
    "OverlappingStoresError",
    "ReadOnlyStoreError",
    "S3Store",
    "StorageError",
    "StoreAccessError",
    "TruncatedImageError",
    "TruthSizeMismatchError",
    "classify",
    "decode_frame",
    "decode_mask",
    "discover",
    "encode_png",
    "kernel_npy_key",
    "kernel_png",
    "kernel_png_key",
    "ledger_key",
    "list_runs",
    "load_frame",
    "load_frames_report",
    "load_kernel",
    "load_summaries",
    "new_run_id",
    "open_store",
    "output_keys",
    "output_metadata",
    "read_ledger",
    "record_done",
    "report_key",
    "restored_key",
    "run_started_at",
    "save_kernel",
    "stores_overlap",
    "validate_key",
    "validate_metadata",
    "validate_prefix",
    "write_frames_report",
    "write_summary",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from storage.base import (
        ObjectInfo,
        ObjectStore,
        stores_overlap,
        validate_metadata,
    )
    from storage.errors import (
        CorruptImageError,
        FrameError,
        ImageTooLargeError,
        InvalidKeyError,
        InvalidMetadataError,
        InvalidURIError,
        KernelFileError,
        LedgerError,
        MaskSizeMismatchError,
        NotAnImageError,
        ObjectNotFoundError,
        ObjectTooLargeError,
        OverlappingStoresError,
        ReadOnlyStoreError,
        StorageError,
        StoreAccessError,
        TruncatedImageError,
        TruthSizeMismatchError,
    )
    from storage.frames import (
        FrameData,
        load_frame,
    )
    from storage.images import (
        decode_frame,
        decode_mask,
        encode_png,
        kernel_png,
    )
    from storage.keys import (
        kernel_npy_key,
        kernel_png_key,
        ledger_key,
        output_keys,
        report_key,
        restored_key,
        validate_key,
        validate_prefix,
    )
    from storage.ledger import (
        LedgerEntry,
        output_metadata,
        read_ledger,
        record_done,
    )
    from storage.local import (
        LocalStore,
    )
    from storage.reports import (
        list_runs,
        load_frames_report,
        load_summaries,
        new_run_id,
        run_started_at,
        write_frames_report,
        write_summary,
    )
    from storage.s3 import (
        S3Store,
    )
    from storage.sidecars import (
        FrameRef,
        classify,
        discover,
        load_kernel,
        save_kernel,
    )
    from storage.stores import (
        open_store,
    )
