"""Native-resolution checkout scenes: training and evaluation data for the v2 image prior.

`render_canvas` scales products with the canvas, so at 256-512 px its barcodes and text are
large and smooth. A camera at the belt sees the opposite: EAN-13 modules 1.5-3 px wide, QR
codes, 7-14 px ingredient text, price stickers, logos, shrink-wrap highlights, hands, belts.
`render_native` draws that detail at a fixed *pixel* scale over a `render_canvas` scene:

- 1-2 label panels (perspective-tilted, drop-shadowed) holding an EAN-13 label whose module
  width is drawn from [MODULE_MIN_PX, MODULE_MAX_PX], an optional QR code (real QR symbols from
  the `qrcode` package, same module range), ingredient / nutrition lines, a price, logos;
- optional shrink-wrap highlights (thin bright specular streaks) and a hand (varied skin tones);
- camera augmentations at output resolution: exposure and gamma, white-balance colour cast,
  Poisson-Gaussian sensor noise and JPEG compression (each with a probability).

Everything is drawn at ``SUPERSAMPLE`` x the output resolution and box-filtered down (like the
base renderer), and a seed fully determines the image (one ``numpy`` generator per call; the
scene seed goes to `render_canvas`, the native layers use an independent stream of the same
seed). Split convention as in `render.py`: training seeds < TRAIN_SEEDS_END, held-out seeds
>= HELDOUT_SEED_START.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from restoration.synthetic import elements as el
from restoration.synthetic.render import (
    SUPERSAMPLE,
    RenderError,
    _composite,
    _place,
    render_canvas,
)

#: Bumped whenever `render_native` output for a seed changes (cache keys, checkpoint metadata).
NATIVE_VERSION = 3
#: Canvas sides drawn by `render_native` when no size is given (inclusive range).
NATIVE_MIN_SIZE, NATIVE_MAX_SIZE = 256, 512
#: Barcode / QR module width range in output pixels (what a belt camera resolves).
MODULE_MIN_PX, MODULE_MAX_PX = 1.5, 3.0
#: EAN-13 label width in modules: 95 code modules + 9-module quiet zones (elements.draw_barcode).
EAN_LABEL_MODULES = 95 + 18

_STREAM = 0x4E415456  # "NATV": the native layers' random stream, independent of the scene's
_WORDS = ("Ingredients:", "wheat", "flour", "sugar", "salt", "water", "palm", "oil", "milk",
          "cocoa", "butter", "emulsifier", "lecithin", "(soy)", "E322", "flavouring", "yeast",
          "maltodextrin", "may", "contain", "traces", "of", "nuts", "Best", "before:", "Store",
          "in", "a", "cool", "dry", "place.", "Lot", "Made", "in", "EU", "Net", "wt", "kcal",
          "per", "100g", "www.example.com", "Recycle", "Allergens:", "gluten", "eggs", "%")
_SKIN = ((255, 224, 196), (241, 194, 160), (224, 172, 132), (198, 134, 96), (161, 102, 70),
         (120, 74, 50), (88, 54, 38))


@dataclass(frozen=True)
class NativeInfo:
    """What a native render contains (for tests and data cards)."""

    size: int
    ean_module_px: tuple[float, ...]
    qr_module_px: tuple[float, ...]
    hand: bool
    shrink_wrap: bool
    jpeg_quality: int | None
    noise_sigma: float


def _ss(v: float) -> int:
    return round(v * SUPERSAMPLE)


# --------------------------------------------------------------------------- codes
def ean_label(code: str, module_px: float, fonts: Sequence[str] = (), height_ratio: float = 0.7,
              supersample: int = SUPERSAMPLE) -> Image.Image:
    """An EAN-13 label (RGB, supersampled) whose modules are ``module_px`` output pixels wide.

    The label is EAN_LABEL_MODULES modules wide (quiet zones included) and ``height_ratio`` x
    as tall; drawn by `elements.draw_barcode` (guard bars, digits).
    """
    if not MODULE_MIN_PX / 2 <= module_px <= 4 * MODULE_MAX_PX:
        raise RenderError(f"module width {module_px} px outside the supported range")
    w = round(EAN_LABEL_MODULES * module_px * supersample)
    h = max(8, round(w * height_ratio))
    img = Image.new("RGB", (w, h), (250, 250, 250))
    path = el.pick_fonts(np.random.default_rng(0), fonts)[1] if fonts else None
    el.draw_barcode(ImageDraw.Draw(img), (0, 0, w, h), code, path)
    return img


def qr_modules(data: str) -> np.ndarray:
    """The module matrix (N, N) bool of a real QR code for ``data`` (no quiet zone)."""
    import qrcode

    q = qrcode.QRCode(border=0, error_correction=qrcode.constants.ERROR_CORRECT_M)
    q.add_data(data)
    q.make(fit=True)
    return np.asarray(q.get_matrix(), dtype=bool)


def qr_label(data: str, module_px: float, supersample: int = SUPERSAMPLE) -> Image.Image:
    """A QR code (RGB, supersampled) with a 4-module quiet zone, ``module_px`` px modules."""
    mods = np.pad(qr_modules(data), 4)
    n = mods.shape[0]
    side = round(n * module_px * supersample)
    img = Image.new("RGB", (side, side), (250, 250, 250))
    d = ImageDraw.Draw(img)
    step = side / n
    for r, c in zip(*np.nonzero(mods), strict=True):
        d.rectangle((c * step, r * step, (c + 1) * step - 1e-3, (r + 1) * step - 1e-3),
                    fill=(15, 15, 15))
    return img


# --------------------------------------------------------------------------- panel content
def _text_lines(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float],
                rng: np.random.Generator, path: el.FontPath, fill: el.RGB, px: float) -> None:
    """Left-aligned lines of small text at ``px`` (output pixels) font size, clipped to box."""
    x0, y0, x1, y1 = box
    f = el.font(path, _ss(px))
    y = y0
    while y + _ss(px) <= y1:
        words, line = [], ""
        while True:
            w = str(_WORDS[int(rng.integers(0, len(_WORDS)))])
            cand = (line + " " + w).strip()
            if f.getlength(cand) > x1 - x0:
                break
            words.append(w)
            line = cand
        if line:
            draw.text((x0, y), line, font=f, fill=fill)
        y += _ss(px) * float(rng.uniform(1.15, 1.45))


def _free_box(rng: np.random.Generator, used: list[tuple[float, ...]], pw: int, ph: int,
              w: float, h: float) -> tuple[float, float] | None:
    """Top-left corner of a w x h box inside (pw, ph) overlapping none of ``used`` (or None)."""
    if w >= pw - 4 or h >= ph - 4:
        return None
    for _ in range(12):
        x = float(rng.uniform(2, pw - w - 2))
        y = float(rng.uniform(2, ph - h - 2))
        if all(x + w < a or x > c or y + h < b or y > d for a, b, c, d in used):
            used.append((x, y, x + w, y + h))
            return x, y
    return None


@dataclass
class _Sheet:
    """A label panel being drawn: its canvas, palette, fonts and the boxes already taken."""

    rng: np.random.Generator
    panel: Image.Image
    draw: ImageDraw.ImageDraw
    pal: el.Palette
    bg: tuple[int, int, int]
    ink: tuple[int, int, int]
    fonts: tuple[str, str, str]  # display, text, bold
    used: list[tuple[float, ...]]

    def free_box(self, w: float, h: float) -> tuple[float, float] | None:
        return _free_box(self.rng, self.used, self.panel.width, self.panel.height, w, h)


def _panel(rng: np.random.Generator, size: int, fonts: Sequence[str],
           codes: dict[str, list[float]]) -> Image.Image:
    """One label panel (RGBA, supersampled): EAN-13, maybe a QR code, text, price, logo."""
    pal = el.palette(rng)
    display, text = el.pick_fonts(rng, fonts)
    bold = el.bold_font(fonts, display)
    ean, module = _ean_label(rng, fonts)
    pw = _ss(size * float(rng.uniform(0.55, 1.0)))
    ph = _ss(size * float(rng.uniform(0.4, 0.85)))
    if ean is not None:  # room for the label (the panel may then run out of the frame)
        pw = max(pw, int(ean.width * float(rng.uniform(1.1, 1.5))))
        ph = max(ph, int(ean.height * float(rng.uniform(1.3, 1.8))))
    bg = pal.light if rng.random() < 0.6 else pal.primary
    panel = Image.new("RGBA", (pw, ph), (*bg, 255))
    sheet = _Sheet(rng, panel, ImageDraw.Draw(panel), pal, bg, el.ink_on(bg), (display, text, bold), [])
    if rng.random() < 0.5:  # brand name across the top (reserved first)
        top = min(ph * 0.2, _ss(48))
        el.draw_text_fit(sheet.draw, (pw * 0.05, 2, pw * 0.95, top), el.brand_name(rng), display,
                         pal.accent if bg == pal.light else sheet.ink)
        sheet.used.append((0.0, 0.0, float(pw), top))
    if ean is not None:
        _paste(sheet, ean, codes["ean"], module)
    if rng.random() < 0.4:  # QR code
        m = float(rng.uniform(MODULE_MIN_PX, MODULE_MAX_PX))
        data = f"https://shop.example/p/{int(rng.integers(0, 10**9))}"
        _paste(sheet, qr_label(data, m), codes["qr"], m)
    if rng.random() < 0.6:
        _price(sheet)
    _logos_and_text(sheet, size)
    return panel


def _ean_label(rng: np.random.Generator, fonts: Sequence[str]) -> tuple[Image.Image | None, float]:
    """An EAN-13 label (80 % of panels; a quarter of them rotated) and its module width, px."""
    if rng.random() >= 0.8:
        return None, 0.0
    m = float(rng.uniform(MODULE_MIN_PX, MODULE_MAX_PX))
    ean = ean_label(el.ean_code(rng), m, fonts, float(rng.uniform(0.3, 0.6)))
    if rng.random() < 0.25:
        ean = ean.transpose(Image.Transpose.ROTATE_90)
    return ean, m


def _paste(sheet: _Sheet, label: Image.Image, record: list[float], module: float) -> None:
    """Paste a code label into a free box; record its module width when it fits."""
    at = sheet.free_box(*label.size)
    if at is not None:
        sheet.panel.paste(label, (int(at[0]), int(at[1])))
        record.append(module)


def _price(sheet: _Sheet) -> None:
    rng = sheet.rng
    ph_px = float(rng.uniform(14, 40))
    price = el.price_text(rng)
    f = el.font(sheet.fonts[2], _ss(ph_px))
    at = sheet.free_box(f.getlength(price) + 8, _ss(ph_px) * 1.3)
    if at is not None:
        col = (200, 20, 30) if rng.random() < 0.4 else sheet.ink
        sheet.draw.text((at[0] + 4, at[1]), price, font=f, fill=col)


def _logos_and_text(sheet: _Sheet, size: int) -> None:
    """0-2 logos, then 2-5 ingredient / nutrition text blocks."""
    rng, draw, (_, text, bold) = sheet.rng, sheet.draw, sheet.fonts
    for _ in range(int(rng.integers(0, 3))):  # logos
        r = _ss(float(rng.uniform(8, 36)))
        at = sheet.free_box(2 * r, 2 * r)
        if at is not None:
            el.draw_logo(draw, (at[0] + r, at[1] + r), r, rng, sheet.pal.accent, sheet.bg, bold,
                         str(rng.choice(list("ABCDEFGHKMNPRSTW"))))
    for _ in range(int(rng.integers(2, 6))):  # ingredient / nutrition text blocks
        bw = _ss(size * float(rng.uniform(0.2, 0.5)))
        bh = _ss(size * float(rng.uniform(0.08, 0.3)))
        at = sheet.free_box(bw, bh)
        if at is None:
            continue
        if rng.random() < 0.25 and bh > _ss(60):
            el.draw_nutrition(draw, (at[0], at[1], at[0] + bw, at[1] + bh), rng, text, bold)
        else:
            _text_lines(draw, (at[0], at[1], at[0] + bw, at[1] + bh), rng, text, sheet.ink,
                        float(rng.uniform(7, 14)))


# --------------------------------------------------------------------------- hands, wrap
def _hand(rng: np.random.Generator, size: int) -> Image.Image:
    """A hand (RGBA, supersampled, fingers up, wrist at the bottom edge), shaded."""
    skin = _SKIN[int(rng.integers(0, len(_SKIN)))]
    skin = tuple(int(np.clip(c * rng.uniform(0.9, 1.08), 0, 255)) for c in skin)
    s = _ss(size * float(rng.uniform(0.25, 0.5)))  # palm width
    w, h = int(s * 1.9), int(s * 2.6)
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    cx, palm_top = w / 2, h * 0.42
    d.rounded_rectangle((cx - s / 2, palm_top, cx + s / 2, h * 0.82), radius=s * 0.3, fill=255)
    d.rectangle((cx - s * 0.38, h * 0.7, cx + s * 0.38, h), fill=255)  # wrist to the edge
    fw = s / 4.4
    bend = float(rng.uniform(-0.25, 0.25))
    for i, length in enumerate((0.78, 0.95, 0.9, 0.68)):
        fx = cx - s / 2 + fw * 0.6 + i * (s - 1.2 * fw) / 3
        L = s * length * float(rng.uniform(0.85, 1.1))
        ang = bend + (i - 1.5) * 0.08
        tip = (fx + math.sin(ang) * L, palm_top + s * 0.1 - math.cos(ang) * L)
        d.line([(fx, palm_top + s * 0.1), tip], fill=255, width=int(fw))
        d.ellipse((tip[0] - fw / 2, tip[1] - fw / 2, tip[0] + fw / 2, tip[1] + fw / 2), fill=255)
    side = 1 if rng.random() < 0.5 else -1  # thumb
    base = (cx + side * s * 0.45, h * 0.68)
    tip = (cx + side * s * 0.95, h * 0.45 - s * float(rng.uniform(0.0, 0.2)))
    d.line([base, tip], fill=255, width=int(fw * 1.15))
    d.ellipse((tip[0] - fw * 0.58, tip[1] - fw * 0.58, tip[0] + fw * 0.58, tip[1] + fw * 0.58),
              fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(SUPERSAMPLE * 0.6))
    # shading: darker towards the silhouette (distance proxy: blurred mask) and one side
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(fw * 0.5)), np.float32) / 255
    xs = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    shade = (0.55 + 0.45 * soft) * (1 + float(rng.uniform(-0.15, 0.15)) * xs)
    rgb = np.asarray(skin, np.float32)[None, None, :] * shade[..., None]
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    img.putalpha(mask)
    return img


def _shrink_wrap(rng: np.random.Generator, hh: int, ww: int) -> np.ndarray:
    """Specular map (hh, ww) in [0, 1]: thin bright curved streaks and a few broad sheens."""
    m = Image.new("L", (ww, hh), 0)
    d = ImageDraw.Draw(m)
    cx, cy = float(rng.uniform(0.2, 0.8)) * ww, float(rng.uniform(0.2, 0.8)) * hh
    ext = float(rng.uniform(0.2, 0.5)) * min(hh, ww)
    for _ in range(int(rng.integers(3, 10))):
        a = float(rng.uniform(0, math.pi))
        pts = []
        x, y = cx + rng.normal(0, ext / 2), cy + rng.normal(0, ext / 2)
        for _ in range(8):
            a += float(rng.normal(0, 0.25))
            step = ext / 6
            x, y = x + math.cos(a) * step, y + math.sin(a) * step
            pts.append((x, y))
        d.line(pts, fill=int(rng.integers(120, 256)), width=max(1, _ss(float(rng.uniform(0.8, 3)))),
               joint="curve")
    streaks = np.asarray(m.filter(ImageFilter.GaussianBlur(SUPERSAMPLE * 0.7)), np.float32) / 255
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    sheen = np.exp(-(((xx - cx) / (ext * 1.2)) ** 2 + ((yy - cy) / (ext * 0.6)) ** 2))
    return np.clip(streaks * float(rng.uniform(0.5, 0.95)) + sheen * float(rng.uniform(0, 0.25)),
                   0, 1)


# --------------------------------------------------------------------------- camera
def camera_augment(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int | None,
                                                                         float]:
    """Exposure, gamma, white-balance cast, Poisson-Gaussian noise, JPEG: uint8 in and out.

    Returns (image, JPEG quality or None, read-noise sigma on [0, 1]).
    """
    x = img.astype(np.float32) / 255
    x = x * float(rng.uniform(0.7, 1.25))  # exposure
    x = np.clip(x, 0, 1) ** float(rng.uniform(0.85, 1.2))  # tone curve
    x = x * rng.uniform(0.88, 1.12, 3).astype(np.float32)  # white balance
    sigma = 0.0
    if rng.random() < 0.6:  # sensor: shot noise ~ sqrt(signal) plus read noise
        sigma = float(rng.uniform(0.002, 0.012))
        shot = float(rng.uniform(0.0, 0.015))
        std = np.sqrt(sigma**2 + shot**2 * np.clip(x, 0, 1))
        x = x + std * rng.standard_normal(x.shape).astype(np.float32)
    out = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
    quality = None
    if rng.random() < 0.5:
        quality = int(rng.integers(70, 96))
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, "JPEG", quality=quality)
        out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out, quality, sigma


# --------------------------------------------------------------------------- scene
def native_size(seed: int) -> int:
    """The canvas side `render_native` uses for ``seed`` when no size is given."""
    rng = np.random.default_rng([int(seed), _STREAM, 1])
    return int(rng.integers(NATIVE_MIN_SIZE, NATIVE_MAX_SIZE + 1))


def render_native_info(seed: int, size: int | None = None, fonts: Sequence[str] = (),
                       augment: bool = True) -> tuple[np.ndarray, NativeInfo]:
    """A native-scale checkout frame (size, size, 3) uint8 and what it contains.

    ``size`` defaults to `native_size(seed)` in [NATIVE_MIN_SIZE, NATIVE_MAX_SIZE];
    ``augment=False`` skips the camera augmentations (clean reference renders).
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise RenderError(f"seed must be a non-negative int, got {seed!r}")
    size = native_size(seed) if size is None else int(size)
    if size < 64:
        raise RenderError(f"native renders need a canvas of at least 64 px, got {size}")
    rng = np.random.default_rng([int(seed), _STREAM])
    base = Image.fromarray(render_canvas(int(seed), size, size, fonts))
    canvas = base.resize((size * SUPERSAMPLE,) * 2, Image.Resampling.NEAREST)
    hh = ww = size * SUPERSAMPLE
    unit = float(hh)
    light = float(rng.uniform(0, 2 * math.pi))
    off = unit * float(rng.uniform(0.008, 0.03))
    shadow_off = np.array([math.cos(light) * off, math.sin(light) * off])
    codes: dict[str, list[float]] = {"ean": [], "qr": []}
    for _ in range(int(rng.choice([1, 2], p=[0.6, 0.4]))):
        panel = _panel(rng, size, fonts, codes)
        centre = (float(rng.uniform(0.3, 0.7)) * ww, float(rng.uniform(0.3, 0.7)) * hh)
        angle = float(rng.normal(0, 0.12)) if rng.random() < 0.7 else float(
            rng.uniform(-math.pi, math.pi))
        dst = _place(panel, centre, angle, 0.015, rng)
        _composite(canvas, panel, dst, shadow_off, unit * 0.01, float(rng.uniform(0.3, 0.6)))
    wrap = rng.random() < 0.4
    if wrap:
        spec = _shrink_wrap(rng, hh, ww)[..., None]
        a = np.asarray(canvas, np.float32) / 255
        canvas = Image.fromarray(((a + spec * (1 - a)) * 255 + 0.5).astype(np.uint8))
    hand = rng.random() < 0.35
    if hand:
        layer = _hand(rng, size)
        edge = int(rng.integers(0, 4))  # fingers point into the frame from this edge
        layer = layer.rotate((0, 180, -90, 90)[edge] + float(rng.normal(0, 20)), expand=True,
                             resample=Image.Resampling.BICUBIC)
        lw, lh = layer.size
        pos = float(rng.uniform(0.15, 0.85))
        depth = float(rng.uniform(0.35, 0.8))
        x, y = {0: (pos * ww - lw / 2, hh - depth * lh), 1: (pos * ww - lw / 2, (depth - 1) * lh),
                2: ((depth - 1) * lw, pos * hh - lh / 2), 3: (ww - depth * lw, pos * hh - lh / 2)}[edge]
        canvas.paste(layer, (int(x), int(y)), layer)
    out = np.asarray(canvas.reduce(SUPERSAMPLE))
    quality, sigma = None, 0.0
    if augment:
        out, quality, sigma = camera_augment(out, rng)
    info = NativeInfo(size, tuple(codes["ean"]), tuple(codes["qr"]), hand, wrap, quality, sigma)
    return np.ascontiguousarray(out), info


def render_native(seed: int, size: int | None = None, fonts: Sequence[str] = (),
                  augment: bool = True) -> np.ndarray:
    """A native-scale checkout frame (size, size, 3) uint8; see :func:`render_native_info`."""
    return render_native_info(seed, size, fonts, augment)[0]
