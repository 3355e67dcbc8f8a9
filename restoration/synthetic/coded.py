"""Native-resolution checkout frames with codes that must read: the bench's `native` suites.

A frame is a held-out checkout scene (:func:`render_canvas`) at a camera size (longest side
256-640 px, aspect 4:3, 1:1 or 3:4) with a product label on it: an EAN-13 barcode at a real
module width (2-3 px per module: thinner EAN-13s often fail to read even when sharp), a QR code
(2-4 px per module) on half of the frames, and a price; each code's true text is returned, so a
read-out counts only when that text comes back. (`restoration/synthetic/native.py` draws similar
labels for training the v2 prior, but does not return the code texts.)
The scene is blurred by the *valid* convolution of a larger canvas (restoration/operators.py)
with a motion or Gaussian kernel of up to 41 px, and noise of std 0.005-0.02 is added before
8-bit quantisation. Everything is determined by the frame's generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from restoration import kernels as kern
from restoration.synthetic import elements as el
from restoration.synthetic.degrade import observe
from restoration.synthetic.render import render_canvas

ASPECTS: tuple[tuple[int, int], ...] = ((4, 3), (1, 1), (3, 4))  # width : height
LONG_SIDE = (256, 640)
KERNEL_SIZES: tuple[int, ...] = tuple(range(9, 42, 2))
NOISE = (0.005, 0.02)
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class NativeFrame:
    """One generated frame: blurred 8-bit observation, sharp truth, kernel, true code texts."""

    blurred: np.ndarray  # (H, W, 3) uint8
    sharp: np.ndarray  # (H, W, 3) uint8, the canvas under the observation
    kernel: np.ndarray  # (K, K) float64, sums to 1
    codes: tuple[str, ...]  # true texts of the codes on the label
    price: str
    noise_sigma: float


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))


def _choice(g: torch.Generator, n: int) -> int:
    return int(torch.randint(n, (1,), generator=g))


def _qr(text: str, module: int) -> np.ndarray:
    import zxingcpp

    code = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode)
    return np.asarray(code.to_image(scale=module, add_quiet_zones=True))


def _label(g: torch.Generator, rng: np.random.Generator, side: int, fonts: Sequence[str],
           qr: bool) -> tuple[Image.Image, tuple[str, ...], str]:
    """A white label with an EAN-13 (and a QR code) for a frame whose longer side is `side`."""
    module = _uniform(g, 2.0, 3.0)
    ean_w = min(module * (95 + 18), 0.85 * side)
    ean_h = max(0.45 * ean_w, 0.25 * side * 0.6)
    ean = el.ean_code(rng)
    code_text = f"CKR-{int(torch.randint(10**8, (1,), generator=g)):08d}"
    qr_img = _qr(code_text, 2 + _choice(g, 3)) if qr else None
    price = el.price_text(rng)
    path = fonts[_choice(g, len(fonts))] if fonts else None
    qr_w = 0 if qr_img is None else qr_img.shape[1]
    qr_h = 0 if qr_img is None else qr_img.shape[0]
    price_h = max(12.0, 0.22 * ean_h)
    pad = max(8.0, 4 * module)  # with draw_barcode's 9 modules: the EAN-13 quiet zones and more
    width = math.ceil(ean_w + (qr_w + pad if qr_img is not None else 0) + 2 * pad)
    height = math.ceil(max(ean_h + price_h + 4, qr_h) + 2 * pad)
    # drawn at SS x and box-filtered down: bars of fractional width integrate like camera pixels
    ss = _SUPERSAMPLE
    label = Image.new("RGB", (width * ss, height * ss), (248, 247, 242))
    draw = ImageDraw.Draw(label)
    el.draw_barcode(draw, (pad * ss, pad * ss, (pad + ean_w) * ss, (pad + ean_h) * ss), ean, path)
    price_box = (pad, pad + 4 + ean_h, pad + ean_w * 0.6, pad + 4 + ean_h + price_h)
    el.draw_text_fit(draw, tuple(v * ss for v in price_box), price, path, (20, 20, 24))
    label = label.reduce(ss)
    codes = [ean]
    if qr_img is not None:  # QR modules are whole pixels already
        label.paste(Image.fromarray(qr_img).convert("RGB"), (round(2 * pad + ean_w), round(pad)))
        codes.append(code_text)
    return label, tuple(codes), price


def native_frame(g: torch.Generator, seed: int, kind: str, fonts: Sequence[str] = ()) -> NativeFrame:
    """One frame of the `native` suites (kind 'motion' or 'gaussian'), determined by `g` and `seed`."""
    if kind not in ("motion", "gaussian"):
        raise ValueError(f"kind must be 'motion' or 'gaussian', got {kind!r}")
    aw, ah = ASPECTS[_choice(g, len(ASPECTS))]
    long_side = int(round(_uniform(g, *LONG_SIDE) / 8) * 8)
    w = long_side if aw >= ah else round(long_side * aw / ah)
    h = long_side if ah >= aw else round(long_side * ah / aw)
    ksize = KERNEL_SIZES[_choice(g, len(KERNEL_SIZES))]
    k = kern.sample_kernels(1, ksize, g, (kind,)).double()
    k = k / k.sum()
    canvas = render_canvas(seed, h + ksize - 1, w + ksize - 1, fonts)
    rng = np.random.default_rng(seed)
    portrait = h > w  # the label runs along the frame's longer side
    label, codes, price = _label(g, rng, max(h, w), fonts, qr=_uniform(g, 0, 1) < 0.5)
    if portrait:
        label = label.transpose(Image.Transpose.ROTATE_90)
    c = (ksize - 1) // 2
    lw, lh = label.size
    if (lw > w - 8 or lh > h - 8) and len(codes) > 1:  # no room for the QR code next to the EAN
        label, codes, price = _label(g, rng, max(h, w), fonts, qr=False)
        if portrait:
            label = label.transpose(Image.Transpose.ROTATE_90)
        lw, lh = label.size
    if lw > w - 8 or lh > h - 8:  # never clip a code: shrink only as far as the frame needs
        scale = min((w - 8) / lw, (h - 8) / lh)
        label = label.resize((max(1, int(lw * scale)), max(1, int(lh * scale))), Image.Resampling.BOX)
        lw, lh = label.size
    x0 = c + 4 + _choice(g, max(1, w - 8 - lw + 1))
    y0 = c + 4 + _choice(g, max(1, h - 8 - lh + 1))
    scene = Image.fromarray(canvas)
    scene.paste(label, (x0, y0))
    canvas = np.array(scene)
    sigma = _uniform(g, *NOISE)  # the blur draws nothing: drawn here, the order is unchanged
    y8, sharp = observe(canvas, k, sigma, g)
    return NativeFrame(y8, np.ascontiguousarray(sharp), k[0, 0].numpy(), codes, price, sigma)
