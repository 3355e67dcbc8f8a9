"""Frame codecs: bytes <-> arrays at the storage edge.

Outcomes (also in docs/storage.md):

==========================  ==============================================================
input                       outcome
==========================  ==============================================================
8-bit RGB PNG/JPEG/WebP     decoded as is
grayscale (L, 1-bit)        replicated to 3 channels
16-bit grayscale PNG        scaled to 8 bit with rounding: ``round(v * 255 / 65535)``
16-bit RGB(A) PNG           Pillow keeps the high byte (``v >> 8``; exact on ``257 * k``)
RGBA / LA / transparent P   composited over white (alpha 0 -> white, 255 -> the colour)
palette (P)                 expanded through the palette
EXIF orientation 2..8       applied (``ImageOps.exif_transpose``): array is as displayed
width x height > limit      :class:`ImageTooLargeError`, checked from the header, before
                            any pixel is decoded (decompression-bomb guard)
0 bytes                     :class:`NotAnImageError` (reason ``empty_file``)
not PNG/JPEG/WebP           :class:`NotAnImageError`
cut short                   :class:`TruncatedImageError`
damaged data / EXIF         :class:`CorruptImageError`
==========================  ==============================================================

All errors derive from :class:`storage.errors.FrameError` and carry a short ``reason``.
Only PNG, JPEG (incl. MPO) and WebP are parsed: other formats never reach a Pillow plug-in.
Animated images give their first frame.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from storage.errors import (
    CorruptImageError,
    FrameError,
    ImageTooLargeError,
    KernelFileError,
    MaskSizeMismatchError,
    NotAnImageError,
    TruncatedImageError,
    TruthSizeMismatchError,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "CorruptImageError",
    "FrameError",
    "ImageTooLargeError",
    "KernelFileError",
    "MaskSizeMismatchError",
    "NotAnImageError",
    "TruncatedImageError",
    "TruthSizeMismatchError",
    "decode_frame",
    "decode_mask",
    "encode_png",
    "kernel_png",
]

DEFAULT_MAX_PIXELS = 36_000_000  # 8K UHD is 33.2 MP; a checkout camera frame is 1-8 MP
_FORMATS = ("PNG", "JPEG", "WEBP")
_SIXTEEN_BIT_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# Pillow's own errors while parsing or decoding a damaged file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


def _sniff(data: bytes) -> str | None:
    """The format a file claims by its magic bytes (even when cut short)."""
    head = bytes(data[:12])
    if b"\x89PNG\r\n\x1a\n".startswith(head[:8]) and head:
        return "PNG"
    if b"\xff\xd8\xff".startswith(head[:3]):
        return "JPEG"
    if b"RIFF".startswith(head[:4]) and (len(head) < 12 or head[8:12] == b"WEBP"):
        return "WEBP"
    return None


def _decode_error(exc: BaseException, what: str) -> FrameError:
    text = str(exc) or type(exc).__name__
    if "truncat" in text.lower():
        return TruncatedImageError(f"{what} is truncated: {text}")
    return CorruptImageError(f"{what} is corrupt: {text}")


def _open(data: bytes, max_pixels: int, what: str) -> Image.Image:
    """Parse the header, enforce the pixel limit, then decode; map failures to FrameErrors."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be bytes, not {type(data).__name__}")
    if len(data) == 0:
        raise NotAnImageError(f"{what} is empty (0 bytes)", reason="empty_file")
    kind = _sniff(data)
    if kind == "WEBP" and len(data) >= 8:
        declared = int.from_bytes(bytes(data[4:8]), "little") + 8
        if len(data) < declared:
            raise TruncatedImageError(f"{what} is truncated: {len(data)} of {declared} bytes")
    try:
        img = Image.open(io.BytesIO(data), formats=_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{what} is over Pillow's hard pixel limit: {exc}") from None
    except UnidentifiedImageError:
        if kind is None:
            raise NotAnImageError(f"{what} is not a PNG, JPEG or WebP image") from None
        if len(data) < 64:
            raise TruncatedImageError(f"{what} ({kind}) is truncated in its header") from None
        raise CorruptImageError(f"{what} has a damaged {kind} header") from None
    except _DECODE_ERRORS as exc:
        raise _decode_error(exc, what) from None
    width, height = img.size
    # Our limit, from the header only: nothing has been decompressed yet.
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {width * height} pixels, over the {max_pixels} limit"
        )
    if width == 0 or height == 0:
        raise CorruptImageError(f"{what} has a zero dimension ({width}x{height})")
    try:
        img.load()
    except _DECODE_ERRORS as exc:
        raise _decode_error(exc, what) from None
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as exc:  # any EXIF parse failure: damaged metadata
        raise CorruptImageError(f"{what} has corrupt EXIF orientation data: {exc}") from None
    return img


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit with rounding: round(v * 255 / 65535)."""
    wide = np.clip(arr.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def decode_frame(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a frame to a C-contiguous ``uint8`` RGB array of shape (H, W, 3), as displayed.

    See the module docstring for the per-input outcome table.
    """
    img = _open(data, max_pixels, "frame")
    mode = img.mode
    if mode in _SIXTEEN_BIT_GRAY:
        gray = _sixteen_to_eight(np.asarray(img))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        # Composite over white: out = c * a + 255 * (1 - a), rounded.
        out = (rgba[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
        return np.ascontiguousarray(out.astype(np.uint8))
    rgb = img if mode == "RGB" else img.convert("RGB")
    return np.array(rgb, dtype=np.uint8, copy=True)


def decode_mask(
    data: bytes,
    *,
    shape: tuple[int, ...] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode an occlusion mask to a bool (H, W) array, True = observed.

    The file is 8-bit grayscale, 255 = observed, 0 = occluded (hand); any value >= 128 counts
    as observed (other modes are first converted to 8-bit gray; alpha is ignored). When
    ``shape`` (the frame's (H, W) or (H, W, 3)) is given and differs:
    :class:`MaskSizeMismatchError`.
    """
    img = _open(data, max_pixels, "mask")
    if img.mode in _SIXTEEN_BIT_GRAY:
        gray = _sixteen_to_eight(np.asarray(img))
    else:
        gray = np.asarray(img if img.mode == "L" else img.convert("L"))
    mask = np.ascontiguousarray(gray >= 128)
    if shape is not None and mask.shape != tuple(shape[:2]):
        raise MaskSizeMismatchError(
            f"mask is {mask.shape[0]}x{mask.shape[1]} (HxW), frame is {shape[0]}x{shape[1]}"
        )
    return mask


def encode_png(image: np.ndarray, *, compress_level: int = 6) -> bytes:
    """Encode a ``uint8`` (H, W), (H, W, 3) or (H, W, 4) array, or a bool (H, W) mask
    (True -> 255), as PNG bytes. No metadata is embedded, so equal arrays give equal bytes."""
    arr = np.asarray(image)
    if arr.dtype == np.bool_ and arr.ndim == 2:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise TypeError(f"encode_png needs uint8 (or a bool mask), got {arr.dtype}")
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"encode_png needs (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"encode_png got an empty image {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


def kernel_png(kernel: np.ndarray, *, min_size: int = 128) -> bytes:
    """A viewable picture of a blur kernel: gray, brightness ``k / max(k)``, enlarged by an
    integer factor (nearest neighbour) to at least ``min_size`` pixels a side."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.size == 0 or not np.all(np.isfinite(k)):
        raise KernelFileError(f"kernel must be a finite non-empty 2-D array, got {k.shape}")
    peak = float(k.max())
    scaled = np.clip(k / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(k)
    pic = np.rint(scaled * 255).astype(np.uint8)
    factor = max(1, -(-min_size // max(k.shape)))
    return encode_png(np.kron(pic, np.ones((factor, factor), dtype=np.uint8)))
