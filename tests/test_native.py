"""Native-resolution renderer (restoration/synthetic/native.py): determinism, sizes, code
module widths (decoded back from the pixels), QR structure, camera augmentations."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from flows.fonts import SYSTEM_FONT_GLOBS, find_fonts
from restoration.synthetic import HELDOUT_SEED_START, RenderError, ean13
from restoration.synthetic.elements import ean_code
from restoration.synthetic.native import (
    EAN_LABEL_MODULES,
    MODULE_MAX_PX,
    MODULE_MIN_PX,
    NATIVE_MAX_SIZE,
    NATIVE_MIN_SIZE,
    camera_augment,
    ean_label,
    native_size,
    qr_label,
    qr_modules,
    render_native,
    render_native_info,
)
from restoration.synthetic.render import SUPERSAMPLE

FONTS = find_fonts(SYSTEM_FONT_GLOBS)


def test_same_seed_same_frame_and_seeds_differ() -> None:
    a, info = render_native_info(HELDOUT_SEED_START + 3, None, FONTS)
    b = render_native(HELDOUT_SEED_START + 3, None, FONTS)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == (info.size, info.size, 3)
    c = render_native(HELDOUT_SEED_START + 4, a.shape[0], FONTS)
    assert c.shape == a.shape and not np.array_equal(a, c)


def test_sizes_follow_the_seed_within_range_or_the_caller() -> None:
    sizes = [native_size(s) for s in range(200)]
    assert min(sizes) >= NATIVE_MIN_SIZE and max(sizes) <= NATIVE_MAX_SIZE
    assert len(set(sizes)) > 50  # spread over the range, not one size
    img = render_native(5, 96, FONTS, augment=False)
    assert img.shape == (96, 96, 3) and img.std() > 10
    with pytest.raises(RenderError):
        render_native(5, 32, FONTS)
    with pytest.raises(RenderError):
        render_native(-1, 128, FONTS)


def test_frames_hold_codes_at_native_module_widths() -> None:
    """Over 24 seeds: EAN-13 on most frames, every module width inside [1.5, 3] px."""
    ean, qr = [], []
    for s in range(24):
        info = render_native_info(1000 + s, 256, FONTS, augment=False)[1]
        ean += info.ean_module_px
        qr += info.qr_module_px
    assert len(ean) >= 12 and len(qr) >= 2
    assert all(MODULE_MIN_PX <= m <= MODULE_MAX_PX for m in ean + qr)


def _to_output(img: Image.Image) -> np.ndarray:
    """Supersampled label -> output pixels (the box filter render_native applies), grey [0, 1]."""
    return np.asarray(img.reduce(SUPERSAMPLE).convert("L"), np.float64) / 255


@pytest.mark.parametrize("module_px", [1.5, 1.8, 2.25, 3.0])
def test_ean_label_module_width_decodes_from_pixels(module_px: float) -> None:
    """Sampling the output-resolution label at module centres (x = (9 + i + 0.5) * m px)
    recovers the exact 95-module pattern: the bars are where a module width of m px says."""
    code = ean_code(np.random.default_rng(int(module_px * 100)))
    lab = ean_label(code, module_px, FONTS)
    assert abs(lab.width / SUPERSAMPLE - EAN_LABEL_MODULES * module_px) <= 1.0
    g = _to_output(lab)
    row = g[int(g.shape[0] * 0.4)]
    xs = (9 + np.arange(95) + 0.5) * module_px
    vals = np.interp(xs, np.arange(row.size) + 0.5, row)
    bits = (vals < 0.5).astype(np.uint8)
    assert ean13.decode(bits) == code


@pytest.mark.parametrize("module_px", [1.5, 2.0, 3.0])
def test_qr_label_is_a_real_qr_matrix_at_the_module_width(module_px: float) -> None:
    data = "https://shop.example/p/42"
    mods = qr_modules(data)
    n = mods.shape[0]
    assert n >= 21 and (n - 21) % 4 == 0  # QR versions: 21 + 4 (v - 1) modules
    finder = np.ones((7, 7), bool)
    finder[1:6, 1:6] = False
    finder[2:5, 2:5] = True
    for block in (mods[:7, :7], mods[:7, -7:], mods[-7:, :7]):
        np.testing.assert_array_equal(block, finder)
    g = _to_output(qr_label(data, module_px))
    centres = (np.arange(n + 8) + 0.5) * module_px
    # sample at module centres (nearest row, linear along the row)
    ix = np.clip(centres - 0.5, 0, g.shape[0] - 1)
    sampled = np.array([[np.interp(x, np.arange(g.shape[1]), g[round(y)]) for x in ix]
                        for y in ix])
    np.testing.assert_array_equal(sampled < 0.5, np.pad(mods, 4))


def test_camera_augment_is_seeded_and_bounded() -> None:
    img = render_native(7, 128, FONTS, augment=False)
    a = camera_augment(img, np.random.default_rng(1))
    b = camera_augment(img, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == img.shape and a[0].dtype == np.uint8
    qualities = [camera_augment(img, np.random.default_rng(s))[1] for s in range(20)]
    assert any(q is None for q in qualities) and any(q is not None for q in qualities)
    assert all(q is None or 70 <= q <= 95 for q in qualities)
    # augmentation is mild: the scene stays recognisable (correlation with the clean frame)
    r = np.corrcoef(img.astype(float).ravel(), a[0].astype(float).ravel())[0, 1]
    assert r > 0.8
