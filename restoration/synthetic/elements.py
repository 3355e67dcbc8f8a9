"""Packaging elements drawn with Pillow: fonts, palettes, words, logos, barcodes, tags, panels.

Every function takes an explicit ``numpy.random.Generator``; fonts are file paths chosen by the
caller (``None`` selects Pillow's built-in scalable font).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from restoration.kernel_ops import LUMA
from restoration.synthetic import ean13

RGB = tuple[int, int, int]
FontPath = str | None

_ONSETS = ("b", "br", "c", "cr", "d", "f", "fr", "g", "gr", "h", "j", "k", "kr", "l", "m", "n",
           "p", "pl", "r", "s", "st", "t", "tr", "v", "z", "sn", "qu", "ch", "sh", "w")
_VOWELS = ("a", "e", "i", "o", "u", "ee", "oo", "ai", "y", "ia", "ou")
_CODAS = ("", "", "", "n", "x", "s", "k", "l", "m", "r", "sh", "z", "tt", "ck")
_PRODUCTS = ("Crisps", "Corn Flakes", "Cola", "Tomato Soup", "Pasta", "Coffee", "Green Tea",
             "Cookies", "Basmati Rice", "Yogurt", "Orange Juice", "Detergent", "Shampoo",
             "Dark Chocolate", "Oat Bars", "Baked Beans", "Sparkling Water", "Whole Milk",
             "Peanut Butter", "Ketchup", "Muesli", "Crackers", "Tuna", "Lemonade", "Honey",
             "Olive Oil", "Pretzels", "Granola", "Soap", "Noodles", "Energy Drink", "Salsa")
_CLAIMS = ("ORGANIC", "CLASSIC", "EXTRA", "LIGHT", "ORIGINAL", "FAMILY SIZE", "SEA SALT",
           "WHOLE GRAIN", "ZERO SUGAR", "PREMIUM", "NEW!", "BIO", "VEGAN", "RICH TASTE",
           "GLUTEN FREE", "HIGH PROTEIN", "DOUBLE PACK", "FRESH", "SPICY", "MILD", "-30%")
_UNITS = ("g", "kg", "ml", "L", "oz", "x")
_NUTRIENTS = ("Energy", "Fat", "of which saturates", "Carbohydrate", "of which sugars",
              "Fibre", "Protein", "Salt", "Sodium", "Calcium", "Vitamin C", "Iron")


@lru_cache(maxsize=2048)
def font(path: FontPath, size: int) -> ImageFont.FreeTypeFont:
    """A (cached) TrueType font; ``path=None`` falls back to Pillow's built-in font."""
    size = max(4, int(size))
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=4096)
def _text_box(path: FontPath, text: str) -> tuple[float, float]:
    """Ink width and height of ``text`` at size 100 (scales ~linearly with size)."""
    left, top, right, bottom = font(path, 100).getbbox(text)
    return max(1.0, float(right - left)), max(1.0, float(bottom - top))


def fit_size(path: FontPath, text: str, width: float, height: float) -> int:
    """Largest font size whose ink box fits into width x height."""
    w, h = _text_box(path, text)
    return int(100 * min(width / w, height / h))


def draw_text_fit(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    text: str,
    path: FontPath,
    fill: RGB,
    max_size: int | None = None,
    anchor: str = "mm",
) -> int:
    """Draw ``text`` centred (by default) in box (x0, y0, x1, y1) at the largest fitting size."""
    x0, y0, x1, y1 = box
    size = fit_size(path, text, x1 - x0, y1 - y0)
    if max_size is not None:
        size = min(size, max_size)
    if size < 4:
        return 0
    pos = {"mm": ((x0 + x1) / 2, (y0 + y1) / 2), "lm": (x0, (y0 + y1) / 2),
           "rm": (x1, (y0 + y1) / 2)}[anchor]
    draw.text(pos, text, font=font(path, size), fill=fill, anchor=anchor)
    return size


def rotated_text(
    layer: Image.Image, box: tuple[int, int, int, int], text: str, path: FontPath, fill: RGB,
    angle: int = 90,
) -> None:
    """Text rotated by a multiple of 90 degrees, fitted into box on an RGB(A) layer."""
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if w < 4 or h < 4:
        return
    tw, th = (h, w) if angle % 180 else (w, h)
    mask = Image.new("L", (tw, th), 0)
    draw_text_fit(ImageDraw.Draw(mask), (0, 0, tw, th), text, path, 255)
    mask = mask.rotate(angle, expand=True)
    layer.paste(Image.new(layer.mode, mask.size, (*fill, 255)[: len(layer.mode)]), (x0, y0), mask)


def brand_name(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 4))
    parts = [str(rng.choice(_ONSETS)) + str(rng.choice(_VOWELS)) for _ in range(n)]
    word = "".join(parts) + str(rng.choice(_CODAS))
    style = rng.random()
    if style < 0.45:
        return word.upper()
    if style < 0.9:
        return word.capitalize()
    return word


def product_words(rng: np.random.Generator) -> tuple[str, str, str]:
    """(product name, claim, quantity) such as ("Cookies", "ORGANIC", "500 g")."""
    unit = str(rng.choice(_UNITS))
    if unit == "x":
        qty = f"{int(rng.integers(2, 13))} x {int(rng.choice([20, 25, 33, 40, 50]))} g"
    elif unit in ("kg", "L"):
        qty = f"{rng.choice([0.5, 0.75, 1, 1.5, 2, 2.5, 5])} {unit}"
    else:
        qty = f"{int(rng.choice([30, 45, 100, 125, 150, 200, 250, 330, 400, 500, 750]))} {unit}"
    return str(rng.choice(_PRODUCTS)), str(rng.choice(_CLAIMS)), qty


def ean_code(rng: np.random.Generator) -> str:
    prefix = str(rng.choice(["40", "50", "54", "76", "80", "87", "90", "00", "30", "73"]))
    body = "".join(str(d) for d in rng.integers(0, 10, 10))
    return ean13.complete(prefix + body)


# --------------------------------------------------------------------------- colour
def hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


def luminance(c: RGB) -> float:
    """Rec. 601 luma of an 8-bit colour on [0, 1] (:data:`restoration.kernel_ops.LUMA`)."""
    return (LUMA[0] * c[0] + LUMA[1] * c[1] + LUMA[2] * c[2]) / 255


def ink_on(c: RGB, dark: RGB = (20, 20, 24), light: RGB = (250, 250, 248)) -> RGB:
    """Dark or light ink, whichever contrasts more with background colour c."""
    return dark if luminance(c) > 0.55 else light


def mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(a[i] * (1 - t) + b[i] * t) for i in range(3))  # type: ignore[return-value]


@dataclass(frozen=True)
class Palette:
    primary: RGB
    secondary: RGB
    accent: RGB
    light: RGB
    dark: RGB


def palette(rng: np.random.Generator) -> Palette:
    """A packaging palette: complementary, analogous, triadic or monochrome around one hue."""
    h = float(rng.random())
    scheme = int(rng.integers(0, 4))
    offs = {0: (0.5, 0.08), 1: (0.08, -0.08), 2: (1 / 3, 2 / 3), 3: (0.0, 0.0)}[scheme]
    s1 = float(rng.uniform(0.45, 1.0))
    v1 = float(rng.uniform(0.35, 0.98))
    primary = hsv(h, s1, v1)
    secondary = hsv(h + offs[0], float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.3, 1.0)))
    accent = hsv(h + offs[1], float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.7, 1.0)))
    if scheme == 3:
        secondary = hsv(h, s1 * 0.5, min(1.0, v1 + 0.3))
    light = hsv(h, float(rng.uniform(0.0, 0.12)), float(rng.uniform(0.9, 1.0)))
    dark = hsv(h, float(rng.uniform(0.2, 0.6)), float(rng.uniform(0.08, 0.25)))
    if rng.random() < 0.15:  # white or black packaging with coloured accents
        primary, light = (light, primary) if rng.random() < 0.5 else (dark, light)
    return Palette(primary, secondary, accent, light, dark)


# --------------------------------------------------------------------------- logos
def star_points(cx: float, cy: float, r: float, n: int, inner: float, rot: float) -> list:
    pts = []
    for i in range(2 * n):
        rr = r if i % 2 == 0 else r * inner
        a = rot + math.pi * i / n
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def draw_logo(
    draw: ImageDraw.ImageDraw, centre: tuple[float, float], r: float, rng: np.random.Generator,
    fg: RGB, bg: RGB, path: FontPath, letter: str,
) -> None:
    """A geometric logo of radius r at ``centre``: disc, ring, star, triangle, diamond, badge, leaf or
    waves."""
    cx, cy = centre
    kind = int(rng.integers(0, 8))
    box = (cx - r, cy - r, cx + r, cy + r)
    w = max(1, int(r * 0.22))
    if kind == 0:
        draw.ellipse(box, fill=fg)
        draw_text_fit(draw, (cx - r * 0.6, cy - r * 0.6, cx + r * 0.6, cy + r * 0.6), letter,
                      path, bg)
    elif kind == 1:
        draw.ellipse(box, outline=fg, width=w)
        draw.ellipse((cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45), fill=fg)
    elif kind == 2:
        draw.polygon(star_points(cx, cy, r, int(rng.integers(5, 9)), 0.5, -math.pi / 2), fill=fg)
    elif kind == 3:
        draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)],
                     fill=fg)
        draw.polygon([(cx, cy - r * 0.3), (cx + r * 0.4, cy + r * 0.45),
                      (cx - r * 0.4, cy + r * 0.45)], fill=bg)
    elif kind == 4:
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fg)
        draw_text_fit(draw, (cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45), letter,
                      path, bg)
    elif kind == 5:
        draw.rounded_rectangle(box, radius=r * 0.3, fill=fg)
        draw.rounded_rectangle((cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8),
                               radius=r * 0.25, outline=bg, width=max(1, w // 2))
        draw_text_fit(draw, (cx - r * 0.6, cy - r * 0.6, cx + r * 0.6, cy + r * 0.6), letter,
                      path, bg)
    elif kind == 6:
        draw.chord((cx - r, cy - r * 0.5, cx + r, cy + r * 1.5), 200, 340, fill=fg)
        draw.chord((cx - r, cy - r * 1.5, cx + r, cy + r * 0.5), 20, 160, fill=fg)
        draw.line([(cx - r * 0.7, cy + r * 0.1), (cx + r * 0.7, cy - r * 0.1)], fill=bg, width=w)
    else:
        for i in range(3):
            yy = cy - r * 0.6 + i * r * 0.6
            draw.arc((cx - r, yy - r * 0.4, cx, yy + r * 0.4), 180, 360, fill=fg, width=w)
            draw.arc((cx, yy - r * 0.4, cx + r, yy + r * 0.4), 0, 180, fill=fg, width=w)


# --------------------------------------------------------------------------- codes, tags, panels
def draw_barcode(
    draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], code: str, path: FontPath,
) -> None:
    """EAN-13 on a white patch filling box: quiet zones, 95 modules, guard bars, digits."""
    x0, y0, x1, y1 = box
    draw.rectangle(box, fill=(250, 250, 250))
    w, h = x1 - x0, y1 - y0
    mw = w / (95 + 18)  # 9-module quiet zone each side (approx.)
    bx = x0 + 9 * mw
    bits = ean13.modules(code)
    digit_h = h * 0.2
    bar_top, bar_bot = y0 + h * 0.06, y1 - digit_h
    guard = set(range(0, 3)) | set(range(45, 50)) | set(range(92, 95))
    i = 0
    while i < 95:  # draw runs of bars as single rectangles (clean edges, faster)
        if bits[i]:
            j = i
            while j < 95 and bits[j]:
                j += 1
            bottom = bar_bot + digit_h * 0.5 if i in guard else bar_bot
            draw.rectangle((bx + i * mw, bar_top, bx + j * mw - 1e-3, bottom), fill=(15, 15, 15))
            i = j
        else:
            i += 1
    size = min(fit_size(path, "0", 7 * mw * 0.9, digit_h * 0.85), 200)
    if size >= 4:
        f = font(path, size)
        ty = y1 - digit_h * 0.45
        draw.text((x0 + 4.5 * mw, ty), code[0], font=f, fill=(15, 15, 15), anchor="mm")
        for k in range(6):
            draw.text((bx + (3 + 7 * k + 3.5) * mw, ty), code[1 + k], font=f, fill=(15, 15, 15),
                      anchor="mm")
            draw.text((bx + (50 + 7 * k + 3.5) * mw, ty), code[7 + k], font=f,
                      fill=(15, 15, 15), anchor="mm")


def price_text(rng: np.random.Generator) -> str:
    euros = int(rng.choice([0, 1, 1, 2, 2, 3, 4, 5, 7, 9, 12, 19]))
    cents = int(rng.choice([99, 49, 29, 95, 79, 0, 69, 19]))
    style = int(rng.integers(0, 3))
    if style == 0:
        return f"${euros}.{cents:02d}"
    if style == 1:
        return f"{euros},{cents:02d} €"
    return f"£{euros}.{cents:02d}"


def draw_price_tag(
    draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], rng: np.random.Generator,
    path: FontPath, bold: FontPath,
) -> None:
    """Shelf/sticker price tag: coloured card, optional red 'SALE' band, big price, fine print."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    card = [(255, 255, 255), (255, 226, 40), (255, 160, 40), (200, 255, 120),
            (255, 120, 150)][int(rng.integers(0, 5))]
    draw.rounded_rectangle(box, radius=min(w, h) * 0.12, fill=card, outline=(40, 40, 40),
                           width=max(1, int(min(w, h) * 0.03)))
    top = y0
    if rng.random() < 0.5:
        band = y0 + h * 0.3
        draw.rectangle((x0 + w * 0.04, y0 + h * 0.05, x1 - w * 0.04, band), fill=(210, 20, 30))
        word = str(rng.choice(["SALE", "PROMO", "OFFER", "-20%", "2 FOR 1", "SPECIAL"]))
        draw_text_fit(draw, (x0 + w * 0.1, y0 + h * 0.07, x1 - w * 0.1, band - h * 0.02), word,
                      bold, (255, 255, 255))
        top = band
    draw_text_fit(draw, (x0 + w * 0.08, top + h * 0.05, x1 - w * 0.08, y1 - h * 0.2),
                  price_text(rng), bold, (20, 20, 20))
    draw_text_fit(draw, (x0 + w * 0.1, y1 - h * 0.19, x1 - w * 0.1, y1 - h * 0.05),
                  f"{rng.integers(1, 99)}.{rng.integers(0, 99):02d} / kg", path, (40, 40, 40))


def draw_nutrition(
    draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], rng: np.random.Generator,
    path: FontPath, bold: FontPath,
) -> None:
    """Nutrition-facts block: header, thick rule, rows of name/value with thin rules."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    ink = (20, 20, 20)
    draw.rectangle(box, fill=(252, 252, 248), outline=ink, width=max(1, int(w * 0.015)))
    pad = w * 0.05
    head_h = h * 0.14
    draw_text_fit(draw, (x0 + pad, y0 + pad * 0.5, x1 - pad, y0 + head_h), "Nutrition Facts",
                  bold, ink, anchor="lm")
    yy = y0 + head_h + pad * 0.3
    draw.rectangle((x0 + pad, yy, x1 - pad, yy + max(1.0, h * 0.025)), fill=ink)
    yy += h * 0.04
    rows = int(rng.integers(5, 10))
    row_h = (y1 - pad * 0.5 - yy) / rows
    names = rng.choice(len(_NUTRIENTS), size=rows, replace=rows > len(_NUTRIENTS))
    for r in range(rows):
        name = _NUTRIENTS[int(names[r])]
        unit = "kcal" if name == "Energy" else "g"
        val = f"{rng.uniform(0.1, 60 if unit == 'g' else 500):.1f} {unit}"
        ya, yb = yy + r * row_h, yy + (r + 1) * row_h
        fpath = bold if r == 0 else path
        draw_text_fit(draw, (x0 + pad, ya, x0 + w * 0.62, yb - row_h * 0.15), name, fpath, ink,
                      anchor="lm")
        draw_text_fit(draw, (x0 + w * 0.64, ya, x1 - pad, yb - row_h * 0.15), val, path, ink,
                      anchor="rm")
        draw.line([(x0 + pad, yb), (x1 - pad, yb)], fill=ink, width=1)


def draw_fine_print(
    draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], rng: np.random.Generator,
    path: FontPath, fill: RGB,
) -> None:
    """A few lines of small text (ingredients, addresses) that read as text texture."""
    x0, y0, x1, y1 = box
    lines = int(rng.integers(2, 6))
    lh = (y1 - y0) / lines
    words = ("Ingredients:", "wheat", "flour", "sugar", "salt", "water", "oil", "milk", "cocoa",
             "Best before", "Store in a", "cool dry place", "Made in", "EU", "www.", "Lot")
    for i in range(lines):
        n = int(rng.integers(3, 7))
        text = " ".join(str(words[int(j)]) for j in rng.integers(0, len(words), n))
        draw_text_fit(draw, (x0, y0 + i * lh, x1, y0 + (i + 0.85) * lh), text, path, fill,
                      anchor="lm")


def pick_fonts(rng: np.random.Generator, fonts: Sequence[str]) -> tuple[FontPath, FontPath]:
    """(display font, text font) drawn from the caller's list; bold-looking names preferred
    for display text when available."""
    if not fonts:
        return None, None
    display = str(fonts[int(rng.integers(0, len(fonts)))])
    plain = [f for f in fonts if "bold" not in f.lower() and "oblique" not in f.lower()
             and "italic" not in f.lower()]
    text = str(plain[int(rng.integers(0, len(plain)))]) if plain else display
    return display, text


def bold_font(fonts: Sequence[str], fallback: FontPath) -> FontPath:
    bolds = [f for f in fonts if "bold" in f.lower() and "oblique" not in f.lower()
             and "italic" not in f.lower()]
    return str(bolds[0]) if bolds else fallback


def solid(size: tuple[int, int], color: RGB) -> Image.Image:
    return Image.new("RGB", size, color)
