"""Load one discovered frame with its sidecars, as arrays, ready for the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from storage.base import ObjectStore
from storage.errors import (
    FrameError,
    ImageTooLargeError,
    ObjectTooLargeError,
    StorageError,
    TruthSizeMismatchError,
)
from storage.images import DEFAULT_MAX_PIXELS, decode_frame, decode_mask
from storage.sidecars import FrameRef, load_kernel

# Refuse to download more than this per object (a 36 MP frame as 16-bit RGB PNG is ~220 MB).
DEFAULT_MAX_BYTES = 256 << 20


@dataclass(frozen=True, eq=False)
class FrameData:
    """A frame and its optional sidecars, decoded (see :mod:`storage.images`).

    ``image`` and ``sharp`` are uint8 (H, W, 3); ``mask`` is bool (H, W), True = observed;
    ``kernel`` is float32 2-D summing to 1.
    """

    ref: FrameRef
    image: np.ndarray
    mask: np.ndarray | None = None
    sharp: np.ndarray | None = None
    kernel: np.ndarray | None = None


def read_capped(store: ObjectStore, key: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The object's bytes, refusing (before downloading) one over ``max_bytes``: that is the
    frame's fault, :class:`ImageTooLargeError` (``image_too_large``), not a store failure."""
    try:
        return store.get(key, max_bytes=max_bytes)
    except ObjectTooLargeError as exc:
        raise ImageTooLargeError(f"{key}: {exc.size} bytes, over the {max_bytes} limit") from None


def load_frame(
    store: ObjectStore,
    ref: FrameRef,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    on_bad_truth: Callable[[str], None] | None = None,
) -> FrameData:
    """Read and decode ``ref``'s frame and sidecars from ``store`` (every read size-capped
    before any byte is decoded).

    Raises a :class:`storage.errors.FrameError` (quarantine with its ``reason``) for any bad
    frame or mask, and for a bad truth (sharp image of another size, kernel file) unless
    ``on_bad_truth`` is given: the pipeline's policy, where truth is optional and a broken truth
    sidecar loses the metrics, not the frame; it then gets one note per dropped sidecar. Storage
    failures (missing object, backend down) stay :class:`storage.errors.StorageError`.
    """
    image = decode_frame(read_capped(store, ref.key, max_bytes), max_pixels=max_pixels)
    mask = None
    if ref.mask_key is not None:
        data = read_capped(store, ref.mask_key, max_bytes)
        mask = decode_mask(data, shape=image.shape, max_pixels=max_pixels)

    def sharp_truth(key: str) -> np.ndarray:
        sharp = decode_frame(read_capped(store, key, max_bytes), max_pixels=max_pixels)
        if sharp.shape != image.shape:
            raise TruthSizeMismatchError(
                f"sharp truth is {sharp.shape[0]}x{sharp.shape[1]} (HxW), "
                f"frame is {image.shape[0]}x{image.shape[1]}"
            )
        return sharp

    def kernel_truth(key: str) -> np.ndarray:
        return load_kernel(read_capped(store, key, max_bytes))

    def optional(name: str, key: str | None, read: Callable[[str], np.ndarray]) -> np.ndarray | None:
        if key is None:
            return None
        if on_bad_truth is None:
            return read(key)
        try:
            return read(key)
        except (FrameError, StorageError) as exc:
            on_bad_truth(f"{name} truth ignored ({getattr(exc, 'reason', 'read_error')}: {exc})")
            return None

    sharp = optional("sharp", ref.sharp_key, sharp_truth)
    kernel = optional("kernel", ref.kernel_key, kernel_truth)
    return FrameData(ref=ref, image=image, mask=mask, sharp=sharp, kernel=kernel)
