"""Frame codecs: every input kind gets its documented outcome (decoded, or a typed error)."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from storage.images import (
    CorruptImageError,
    FrameError,
    ImageTooLargeError,
    KernelFileError,
    MaskSizeMismatchError,
    NotAnImageError,
    TruncatedImageError,
    decode_frame,
    decode_mask,
    encode_png,
    kernel_png,
)


def rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    color_type = 0 if arr.ndim == 2 else 2
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that *claims* w x h pixels: the bomb check must fire on the header alone."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"\x78\x9c")


# ---------------------------------------------------------------- decoded correctly


def test_rgb_png_roundtrip_exact() -> None:
    arr = rgb()
    out = decode_frame(encode_png(arr))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_decode_to_rgb(fmt: str) -> None:
    arr = np.full((20, 30, 3), (200, 40, 90), dtype=np.uint8)
    out = decode_frame(save(Image.fromarray(arr), fmt, quality=95))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - arr).max() <= 6


def test_grayscale_replicated() -> None:
    gray = rgb()[:, :, 0]
    out = decode_frame(save(Image.fromarray(gray, "L"), "PNG"))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
    bits = decode_frame(save(Image.fromarray(gray > 127).convert("1"), "PNG"))
    np.testing.assert_array_equal(bits[:, :, 0], np.where(gray > 127, 255, 0))


def test_sixteen_bit_gray_scaled_with_rounding() -> None:
    values = np.array([[0, 257, 65535, 32768], [128, 129, 1000, 65278]], dtype=np.uint16)
    out = decode_frame(png16(values))
    expected = np.rint(values / 257.0).astype(np.uint8)  # round(v * 255 / 65535)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def test_sixteen_bit_rgb_keeps_high_byte() -> None:
    k = np.arange(12, dtype=np.uint16).reshape(2, 2, 3) * 23
    out = decode_frame(png16(k * 257))  # 257 * k is exactly k in 8 bits
    np.testing.assert_array_equal(out, k.astype(np.uint8))
    noisy = np.array([[[65535, 300, 40000]]], dtype=np.uint16)
    np.testing.assert_array_equal(decode_frame(png16(noisy))[0, 0], noisy[0, 0] >> 8)


def test_rgba_composited_on_white() -> None:
    px = np.array(
        [[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128], [10, 20, 30, 255]]], dtype=np.uint8
    )
    out = decode_frame(save(Image.fromarray(px, "RGBA"), "PNG"))
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent -> white
    np.testing.assert_array_equal(out[0, 1], [255, 0, 0])  # opaque -> the colour
    np.testing.assert_array_equal(out[0, 2], [127, 127, 127])  # 255 * 127 / 255
    np.testing.assert_array_equal(out[0, 3], [10, 20, 30])


def test_palette_expanded_and_transparent_palette_composited() -> None:
    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    out = decode_frame(save(img, "PNG"))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])
    out_t = decode_frame(save(img, "PNG", transparency=1))  # index 1 fully transparent
    np.testing.assert_array_equal(out_t[0], [[255, 0, 0], [255, 255, 255], [0, 0, 255]])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_applied(fmt: str) -> None:
    # Stored 20 rows x 30 columns; orientation 6: "rotate 90 degrees clockwise to display".
    stored = np.zeros((20, 30, 3), dtype=np.uint8)
    stored[:10, :15] = (255, 0, 0)  # top-left quadrant red
    exif = Image.Exif()
    exif[0x0112] = 6
    data = save(Image.fromarray(stored), fmt, exif=exif.tobytes())
    out = decode_frame(data)
    assert out.shape == (30, 20, 3)
    # After a clockwise turn the stored top-left lands top-right.
    shown = np.rot90(stored, k=-1)
    error = np.abs(out.astype(int) - shown)
    if fmt == "PNG":
        assert error.max() == 0
    else:  # lossy: compare on average
        assert error.mean() < 8
    assert out[2, -3, 0] > 200 and out[2, 2, 0] < 60


def test_over_limit_checked_from_header_before_decoding() -> None:
    arr = rgb(20, 20)
    assert decode_frame(encode_png(arr), max_pixels=400).shape == (20, 20, 3)
    with pytest.raises(ImageTooLargeError, match="400 pixels, over the 399 limit"):
        decode_frame(encode_png(arr), max_pixels=399)
    # A 60000 x 60000 claim with no real data: rejected in milliseconds, no allocation.
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLargeError) as info:
        decode_frame(png_header_only(60_000, 60_000))
    assert time.perf_counter() - t0 < 1.0
    assert info.value.reason == "image_too_large"
    with pytest.raises(ImageTooLargeError, match="over the"):
        decode_frame(png_header_only(8000, 5000))  # 40 MP > our 36 MP, under Pillow's limit


# ---------------------------------------------------------------- typed errors


def test_zero_bytes() -> None:
    with pytest.raises(NotAnImageError) as info:
        decode_frame(b"")
    assert info.value.reason == "empty_file"


@pytest.mark.parametrize(
    "data",
    [b"hello, this is a text file\n" * 10, b"%PDF-1.7\n...", b"RIFF\x24\x00\x00\x00WAVEfmt "],
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(NotAnImageError) as info:
        decode_frame(data)
    assert info.value.reason == "not_an_image"


def test_other_image_formats_are_not_parsed() -> None:
    tiff = save(Image.fromarray(rgb()), "TIFF")
    with pytest.raises(NotAnImageError):
        decode_frame(tiff)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("fraction", [0.005, 0.3, 0.7])
def test_truncated(fmt: str, fraction: float) -> None:
    data = save(Image.fromarray(rgb(64, 64)), fmt)
    with pytest.raises(TruncatedImageError) as info:
        decode_frame(data[: max(1, int(len(data) * fraction))])
    assert info.value.reason == "truncated_image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_corrupt_data(fmt: str) -> None:
    data = bytearray(save(Image.fromarray(rgb(64, 64)), fmt))
    start = len(data) // 3
    for i in range(start, start + 40):
        data[i] ^= 0x5A
    with pytest.raises(CorruptImageError) as info:
        decode_frame(bytes(data))
    assert info.value.reason == "corrupt_image"


def test_corrupt_header() -> None:
    data = bytearray(encode_png(rgb()))
    data[16:24] = b"\xff" * 8  # IHDR width/height garbage, CRC now wrong
    with pytest.raises(CorruptImageError):
        decode_frame(bytes(data))


def test_every_error_is_a_frame_error_with_short_reason() -> None:
    classes = [
        CorruptImageError,
        TruncatedImageError,
        NotAnImageError,
        ImageTooLargeError,
        MaskSizeMismatchError,
        KernelFileError,
    ]
    reasons = {cls("x").reason for cls in classes}
    assert len(reasons) == len(classes)
    for cls in classes:
        assert issubclass(cls, FrameError)
        assert cls("x").reason.isidentifier() and len(cls("x").reason) <= 20


# ---------------------------------------------------------------- masks and encoding


def test_mask_threshold_and_shape() -> None:
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    mask = decode_mask(encode_png(values), shape=(1, 4, 3))
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, [[False, False, True, True]])
    with pytest.raises(MaskSizeMismatchError, match="1x4") as info:
        decode_mask(encode_png(values), shape=(4, 1))
    assert info.value.reason == "mask_size_mismatch"


def test_mask_from_other_modes() -> None:
    observed = rgb(8, 8)[:, :, 0] > 100
    as_rgb = np.repeat((observed * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(decode_mask(encode_png(as_rgb)), observed)
    np.testing.assert_array_equal(decode_mask(encode_png(observed)), observed)  # bool -> 0/255
    np.testing.assert_array_equal(decode_mask(png16(observed.astype(np.uint16) * 65535)), observed)
    with pytest.raises(TruncatedImageError):
        decode_mask(encode_png(as_rgb)[:50])


def test_encode_png_rejects_bad_arrays() -> None:
    with pytest.raises(TypeError):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((0, 4, 3), dtype=np.uint8))
    assert encode_png(rgb()) == encode_png(rgb())  # deterministic bytes


def test_kernel_png_is_viewable() -> None:
    k = np.zeros((15, 15), dtype=np.float32)
    k[7, 3:12] = 1 / 9
    pic = decode_frame(kernel_png(k))
    assert pic.shape == (135, 135, 3)  # 15 * 9 >= 128
    assert pic.max() == 255 and pic[0, 0, 0] == 0
    with pytest.raises(KernelFileError):
        kernel_png(np.full((3, 3), np.nan))
