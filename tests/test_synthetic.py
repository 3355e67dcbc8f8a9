"""Procedural product renderer: determinism, variety, shapes, EAN-13 correctness, speed."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from flows.fonts import SYSTEM_FONT_GLOBS, find_fonts
from restoration.synthetic import (
    HELDOUT_SEED_START,
    TRAIN_SEEDS_END,
    RenderError,
    ean13,
    is_heldout,
    render_batch,
    render_canvas,
    render_product,
    to_tensor,
)
from restoration.synthetic.elements import draw_barcode, ean_code

FONTS = find_fonts(SYSTEM_FONT_GLOBS)


def test_shape_dtype_and_determinism() -> None:
    a = render_product(123, 128, FONTS)
    b = render_product(123, 128, FONTS)
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, render_product(124, 128, FONTS))


def test_builtin_font_fallback_is_deterministic() -> None:
    a = render_product(7, 96, ())
    np.testing.assert_array_equal(a, render_product(7, 96, ()))
    assert a.shape == (96, 96, 3)


@pytest.mark.parametrize(("h", "w"), [(96, 160), (161, 97), (256, 256)])
def test_canvas_shapes(h: int, w: int) -> None:
    img = render_canvas(HELDOUT_SEED_START + 5, h, w, FONTS)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    assert img.std() > 10  # not a flat image


def test_two_hundred_distinct_skus() -> None:
    """200 seeds -> 200 distinct images, and no near-duplicates (mean |diff| at 32x32)."""
    imgs = [render_product(s, 128, FONTS) for s in range(200)]
    digests = {hashlib.sha1(im.tobytes()).hexdigest() for im in imgs}
    assert len(digests) == 200
    small = np.stack([
        np.asarray(Image.fromarray(im).resize((32, 32), Image.Resampling.BOX), np.float32)
        .ravel() / 255 for im in imgs
    ])
    d = np.abs(small[:, None, :] - small[None, :, :]).mean(-1)
    d[np.arange(200), np.arange(200)] = np.inf
    print(f"min pairwise mean |diff| over 200 renders: {d.min():.4f}")
    assert d.min() > 0.02
    stds = np.array([im.astype(np.float32).std() / 255 for im in imgs])
    print(f"per-image std: min {stds.min():.3f} median {np.median(stds):.3f}")
    assert stds.min() > 0.03


def test_render_batch_matches_single_renders() -> None:
    seeds = [HELDOUT_SEED_START + i for i in range(4)]
    batch = render_batch(seeds, 64, FONTS)
    assert batch.shape == (4, 3, 64, 64) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    single = to_tensor([render_product(seeds[2], 64, FONTS)])
    torch.testing.assert_close(batch[2:3], single, rtol=0, atol=0)


def test_bad_arguments_raise() -> None:
    with pytest.raises(RenderError):
        render_product(-1, 64, FONTS)
    with pytest.raises(RenderError):
        render_canvas(0, 4, 64, FONTS)


def test_seed_split_convention() -> None:
    assert TRAIN_SEEDS_END <= HELDOUT_SEED_START
    assert not is_heldout(TRAIN_SEEDS_END - 1)
    assert is_heldout(HELDOUT_SEED_START)


@pytest.mark.parametrize(
    "code", ["4006381333931", "5901234123457", "9780306406157", "0012345678905"]
)
def test_ean13_known_check_digits(code: str) -> None:
    assert ean13.check_digit(code[:12]) == int(code[12])
    assert ean13.decode(ean13.modules(code)) == code


def test_ean13_structure() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        code = ean_code(rng)
        bits = ean13.modules(code)
        assert bits.shape == (95,)
        s = "".join(map(str, bits))
        assert s[:3] == "101" and s[45:50] == "01010" and s[-3:] == "101"
        # every right-hand symbol (R code) has even parity and starts with a bar
        for i in range(6):
            sym = s[50 + 7 * i: 57 + 7 * i]
            assert sym.count("1") % 2 == 0 and sym[0] == "1"
        assert ean13.decode(bits) == code
    with pytest.raises(ean13.BarcodeError):
        ean13.modules("4006381333932")
    with pytest.raises(ean13.BarcodeError):
        ean13.check_digit("12345")


def test_drawn_barcode_decodes_from_pixels() -> None:
    """Draw an EAN-13 at 3 px/module, read one scan line back, decode it."""
    code = ean_code(np.random.default_rng(5))
    mw = 3
    img = Image.new("RGB", ((95 + 18) * mw, 120), (255, 255, 255))
    draw_barcode(ImageDraw.Draw(img), (0, 0, img.width, img.height), code,
                 FONTS[0] if FONTS else None)
    row = np.asarray(img.convert("L"))[40]
    start = 9 * mw
    centres = start + mw * np.arange(95) + mw // 2
    bits = (row[centres] < 128).astype(np.uint8)
    assert ean13.decode(bits) == code


def test_render_speed() -> None:
    for s in range(5):  # warm the font cache
        render_product(s, 128, FONTS)
    n = 40
    t0 = time.perf_counter()
    for s in range(n):
        render_product(1000 + s, 128, FONTS)
    ms = (time.perf_counter() - t0) / n * 1e3
    print(f"render_product 128x128: {ms:.1f} ms/render ({len(FONTS)} fonts)")
    assert ms < 80  # generous: the CI machine is shared; the target is < 20 ms
