"""Product drawers: each returns an RGBA layer (shaded, alpha = silhouette) of one packaged good.

Sizes are in supersampled canvas pixels; ``unit`` is the canvas' shorter side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from restoration.synthetic import elements as el
from restoration.synthetic import shading as sh
from restoration.synthetic.elements import FontPath, Palette


@dataclass(frozen=True)
class Identity:
    """What makes a SKU: brand, words, barcode, fonts and palette."""

    brand: str
    product: str
    claim: str
    qty: str
    code: str
    display: FontPath
    text: FontPath
    bold: FontPath
    pal: Palette


def identity(rng: np.random.Generator, fonts: Sequence[str]) -> Identity:
    display, text = el.pick_fonts(rng, fonts)
    product, claim, qty = el.product_words(rng)
    return Identity(el.brand_name(rng), product, claim, qty, el.ean_code(rng), display, text,
                    el.bold_font(fonts, display), el.palette(rng))


# --------------------------------------------------------------------------- label designs
def _food(draw: ImageDraw.ImageDraw, box: tuple, rng: np.random.Generator) -> None:
    """An 'illustration' of the contents: a heap of shaded blobs in food colours."""
    x0, y0, x1, y1 = box
    base = [(200, 150, 60), (190, 40, 30), (240, 200, 80), (110, 60, 30), (90, 150, 40),
            (240, 120, 30), (235, 225, 200)][int(rng.integers(0, 7))]
    n = int(rng.integers(3, 9))
    w, h = x1 - x0, y1 - y0
    for _ in range(n):
        r = float(rng.uniform(0.15, 0.3)) * min(w, h)
        cx, cy = x0 + float(rng.uniform(r, w - r)), y0 + float(rng.uniform(r, h - r))
        c = el.mix(base, (0, 0, 0), float(rng.uniform(0, 0.3)))
        draw.ellipse((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), fill=c)
        hr = r * 0.35
        draw.ellipse((cx - r * 0.5 - hr, cy - r * 0.4 - hr * 0.6, cx - r * 0.5 + hr,
                      cy - r * 0.4 + hr * 0.6), fill=el.mix(c, (255, 255, 255), 0.45))


def _front_design(face: Image.Image, rng: np.random.Generator, ident: Identity) -> None:
    """Brand-forward front panel on an RGB face image."""
    w, h = face.size
    pal = ident.pal
    draw = ImageDraw.Draw(face)
    style = int(rng.integers(0, 3))
    if style == 0:  # horizontal band carrying the brand
        y0, y1 = h * float(rng.uniform(0.22, 0.4)), h * float(rng.uniform(0.5, 0.62))
        draw.rectangle((0, y0, w, y1), fill=pal.secondary)
        draw.rectangle((0, y1, w, y1 + h * 0.02), fill=pal.accent)
        el.draw_text_fit(draw, (w * 0.06, y0, w * 0.94, y1), ident.brand, ident.display,
                         el.ink_on(pal.secondary))
        el.draw_text_fit(draw, (w * 0.3, h * 0.04, w * 0.95, y0 - h * 0.04), ident.claim,
                         ident.bold, el.ink_on(pal.primary))
        r = min(w, h) * 0.1
        el.draw_logo(draw, (w * 0.04 + r, h * 0.04 + r), r, rng, pal.accent, pal.primary,
                     ident.bold, ident.brand[0].upper())
        _food(draw, (w * 0.05, y1 + h * 0.04, w * 0.7, h * 0.95), rng)
        el.draw_text_fit(draw, (w * 0.7, h * 0.8, w * 0.96, h * 0.95), ident.qty, ident.text,
                         el.ink_on(pal.primary))
    elif style == 1:  # diagonal split with big brand on top
        draw.polygon([(0, h * 0.55), (w, h * 0.35), (w, h), (0, h)], fill=pal.secondary)
        el.draw_text_fit(draw, (w * 0.06, h * 0.05, w * 0.94, h * 0.3), ident.brand,
                         ident.display, el.ink_on(pal.primary))
        el.draw_text_fit(draw, (w * 0.1, h * 0.3, w * 0.9, h * 0.4), ident.product, ident.text,
                         el.ink_on(pal.primary))
        r = min(w, h) * 0.14
        el.draw_logo(draw, (w * 0.75, h * 0.7), r, rng, pal.accent, pal.secondary, ident.bold,
                     ident.brand[0].upper())
        el.draw_text_fit(draw, (w * 0.06, h * 0.6, w * 0.55, h * 0.72), ident.claim, ident.bold,
                         el.ink_on(pal.secondary))
        el.draw_text_fit(draw, (w * 0.06, h * 0.85, w * 0.45, h * 0.95), ident.qty, ident.text,
                         el.ink_on(pal.secondary))
    else:  # centred badge layout
        r = min(w, h) * 0.33
        cx, cy = w / 2, h * 0.42
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=pal.light, outline=pal.accent,
                     width=max(1, int(r * 0.08)))
        el.draw_text_fit(draw, (cx - r * 0.8, cy - r * 0.35, cx + r * 0.8, cy + r * 0.35),
                         ident.brand, ident.display, el.ink_on(pal.light))
        el.draw_text_fit(draw, (w * 0.08, h * 0.78, w * 0.92, h * 0.9), ident.product,
                         ident.bold, el.ink_on(pal.primary))
        el.draw_text_fit(draw, (w * 0.2, h * 0.9, w * 0.8, h * 0.98), ident.qty, ident.text,
                         el.ink_on(pal.primary))
        draw.rectangle((0, 0, w, h * 0.06), fill=pal.accent)


def _back_design(face: Image.Image, rng: np.random.Generator, ident: Identity) -> None:
    """Back panel: nutrition facts, a large EAN-13 and fine print on a light background."""
    w, h = face.size
    draw = ImageDraw.Draw(face)
    draw.rectangle((0, 0, w, h * 0.14), fill=ident.pal.primary)
    el.draw_text_fit(draw, (w * 0.05, h * 0.02, w * 0.95, h * 0.12), ident.brand, ident.display,
                     el.ink_on(ident.pal.primary))
    el.draw_nutrition(draw, (w * 0.05, h * 0.18, w * 0.52, h * 0.92), rng, ident.text, ident.bold)
    bw = w * 0.4
    el.draw_barcode(draw, (w * 0.56, h * 0.6, w * 0.56 + bw, h * 0.6 + bw * 0.6), ident.code,
                    ident.text)
    el.draw_fine_print(draw, (w * 0.56, h * 0.2, w * 0.96, h * 0.55), rng, ident.text,
                       el.ink_on(ident.pal.light))


def _barcode_patch(
    layer: Image.Image, box: tuple[float, float, float, float], ident: Identity,
    vertical: bool = False,
) -> None:
    """An EAN-13 label pasted into box (x0, y0, x1, y1); vertical = bars run horizontally."""
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = x1 - x0, y1 - y0
    if min(w, h) < 8:
        return
    tw, th = (h, w) if vertical else (w, h)
    patch = Image.new("RGB", (tw, th), (250, 250, 250))
    el.draw_barcode(ImageDraw.Draw(patch), (0, 0, tw, th), ident.code, ident.text)
    if vertical:
        patch = patch.transpose(Image.Transpose.ROTATE_90)
    layer.paste(patch, (x0, y0))


def _maybe_price_tag(layer: Image.Image, rng: np.random.Generator, ident: Identity,
                     region: tuple[float, float, float, float], p: float = 0.3) -> None:
    if rng.random() >= p:
        return
    x0, y0, x1, y1 = region
    tw = (x1 - x0) * float(rng.uniform(0.35, 0.55))
    th = tw * float(rng.uniform(0.55, 0.8))
    if th > (y1 - y0) or tw < 12:
        return
    tx = x0 + float(rng.uniform(0, x1 - x0 - tw))
    ty = y0 + float(rng.uniform(0, y1 - y0 - th))
    el.draw_price_tag(ImageDraw.Draw(layer), (tx, ty, tx + tw, ty + th), rng, ident.text,
                      ident.bold)


# --------------------------------------------------------------------------- products
def carton(rng: np.random.Generator, unit: float, ident: Identity) -> Image.Image:
    """Box/carton: front (or back) face plus visible top and side faces."""
    fw = int(unit * rng.uniform(0.5, 0.85))
    fh = int(min(unit * 1.1, fw * rng.uniform(0.6, 1.45)))
    d = 0 if rng.random() < 0.3 else int(fw * rng.uniform(0.06, 0.2))
    pal = ident.pal
    face = sh.gradient_image(fw, fh, pal.primary, el.mix(pal.primary, pal.dark, 0.3))
    back = rng.random() < 0.35
    (_back_design if back else _front_design)(face, rng, ident)
    if not back and rng.random() < 0.25:
        bw = fw * 0.3
        _barcode_patch(face, (fw * 0.66, fh * 0.04, fw * 0.66 + bw, fh * 0.04 + bw * 0.6), ident)
    layer = Image.new("RGBA", (fw + d, fh + d), (0, 0, 0, 0))
    layer.paste(face, (0, d))
    mask = Image.new("L", layer.size, 0)
    mdraw = ImageDraw.Draw(mask)
    mdraw.rectangle((0, d, fw - 1, fh + d - 1), fill=255)
    mult = sh.linear_gradient(fw + d, fh + d, rng, 0.85, 1.08)
    if d > 0:
        draw = ImageDraw.Draw(layer)
        top = [(0, d), (d, 0), (fw + d, 0), (fw, d)]
        side = [(fw, d), (fw + d, 0), (fw + d, fh), (fw, fh + d)]
        draw.polygon(top, fill=el.mix(pal.primary, (255, 255, 255), 0.2))
        draw.polygon(side, fill=el.mix(pal.secondary, pal.dark, 0.3))
        mdraw.polygon(top, fill=255)
        mdraw.polygon(side, fill=255)
        edge = el.mix(pal.dark, (0, 0, 0), 0.5)
        draw.line([(0, d), (fw, d), (fw, fh + d)], fill=edge, width=1)
        smask = Image.new("L", layer.size, 0)
        ImageDraw.Draw(smask).polygon(side, fill=255)
        mult = mult * (1 - 0.3 * (np.asarray(smask, np.float32) / 255))
    _maybe_price_tag(layer, rng, ident, (fw * 0.05, d + fh * 0.05, fw * 0.95, d + fh * 0.95))
    spec = None
    if rng.random() < 0.4:  # glossy film: a soft diagonal sheen
        g = sh.linear_gradient(fw + d, fh + d, rng, -1.0, 1.0)
        spec = 0.35 * np.exp(-((g - float(rng.uniform(-0.5, 0.5))) / 0.12) ** 2)
    layer.putalpha(mask)
    return sh.apply_shading(layer, mult, spec)


def can(rng: np.random.Generator, unit: float, ident: Identity) -> Image.Image:
    """Drinks/food can seen from the side: metallic ends, printed body, strong highlight."""
    w = int(unit * rng.uniform(0.32, 0.5))
    h = int(min(unit * 1.15, w * rng.uniform(1.3, 2.0)))
    ey = max(2, int(w * 0.1))
    pal = ident.pal
    body = sh.gradient_image(w, h, pal.primary, el.mix(pal.primary, pal.secondary, 0.35))
    draw = ImageDraw.Draw(body)
    style = int(rng.integers(0, 3))
    if style == 0:
        for i in range(int(rng.integers(1, 4))):
            yy = h * float(rng.uniform(0.15, 0.85))
            draw.rectangle((0, yy, w, yy + h * 0.03 * (i + 1)), fill=pal.accent)
        el.rotated_text(body, (int(w * 0.15), int(h * 0.12), int(w * 0.85), int(h * 0.88)),
                        ident.brand, ident.display, el.ink_on(pal.primary), 90)
    elif style == 1:
        draw.polygon([(0, h * 0.55), (w, h * 0.3), (w, h * 0.45), (0, h * 0.7)], fill=pal.accent)
        el.draw_text_fit(draw, (w * 0.08, h * 0.15, w * 0.92, h * 0.42), ident.brand,
                         ident.display, el.ink_on(pal.primary))
        el.draw_text_fit(draw, (w * 0.1, h * 0.72, w * 0.9, h * 0.84), ident.product, ident.text,
                         el.ink_on(pal.primary))
    else:
        r = w * 0.3
        el.draw_logo(draw, (w / 2, h * 0.35), r, rng, pal.accent, pal.primary, ident.bold,
                     ident.brand[0].upper())
        el.draw_text_fit(draw, (w * 0.06, h * 0.55, w * 0.94, h * 0.72), ident.brand,
                         ident.display, el.ink_on(pal.primary))
        el.draw_text_fit(draw, (w * 0.15, h * 0.76, w * 0.85, h * 0.84), ident.qty, ident.text,
                         el.ink_on(pal.primary))
    if rng.random() < 0.3:
        bh = h * 0.4
        _barcode_patch(body, (w * 0.62, h * 0.3, w * 0.62 + bh * 0.55, h * 0.3 + bh), ident,
                       vertical=True)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    layer.paste(body, (0, 0))
    ldraw = ImageDraw.Draw(layer)
    metal = (int(rng.integers(150, 215)),) * 3
    ldraw.rectangle((0, 0, w, ey * 2), fill=metal)
    ldraw.ellipse((0, 0, w - 1, 2 * ey), fill=el.mix(metal, (255, 255, 255), 0.25),
                  outline=el.mix(metal, (0, 0, 0), 0.4), width=max(1, ey // 3))
    ldraw.ellipse((w * 0.12, ey * 0.35, w * 0.88, ey * 1.65), fill=el.mix(metal, (0, 0, 0), 0.15))
    ldraw.rectangle((0, h - 2 * ey, w, h), fill=el.mix(metal, (0, 0, 0), 0.1))
    _maybe_price_tag(layer, rng, ident, (0, h * 0.3, w, h * 0.9), p=0.15)
    mask = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask)
    md.rectangle((0, ey, w - 1, h - ey), fill=255)
    md.ellipse((0, 0, w - 1, 2 * ey), fill=255)
    md.ellipse((0, h - 2 * ey - 1, w - 1, h - 1), fill=255)
    layer.putalpha(mask)
    mult, spec = sh.cylinder(w, h, rng, float(rng.uniform(0.45, 0.8)))
    return sh.apply_shading(layer, mult, spec)


def bottle(rng: np.random.Generator, unit: float, ident: Identity) -> Image.Image:
    """Bottle with cap, neck, shoulder, tinted liquid and a wrap-around label."""
    w = int(unit * rng.uniform(0.28, 0.42))
    h = int(min(unit * 1.3, w * rng.uniform(2.2, 3.0)))
    pal = ident.pal
    liquid = [(90, 45, 20), (40, 110, 50), (200, 225, 235), (240, 150, 30), (170, 20, 40),
              (230, 230, 210), (30, 30, 35)][int(rng.integers(0, 7))]
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    mask = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask)
    cap_h, neck_h = h * 0.08, h * 0.2
    cap = pal.accent if rng.random() < 0.6 else (230, 230, 230)
    shapes = [
        ("rect", (w * 0.32, 0, w * 0.68, cap_h)),
        ("rect", (w * 0.35, cap_h, w * 0.65, neck_h + h * 0.02)),
        ("ellipse", (0, neck_h, w - 1, neck_h + h * 0.22)),
        ("round", (0, neck_h + h * 0.11, w - 1, h - 1)),
    ]
    for kind, box in shapes:
        for d, fill in ((draw, liquid), (md, 255)):
            if kind == "rect":
                d.rectangle(box, fill=fill)
            elif kind == "ellipse":
                d.ellipse(box, fill=fill)
            else:
                d.rounded_rectangle(box, radius=w * 0.15, fill=fill)
    draw.rectangle((w * 0.32, 0, w * 0.68, cap_h), fill=cap)
    for i in range(1, 6):  # cap ridges
        x = w * 0.32 + i * w * 0.36 / 6
        draw.line([(x, 0), (x, cap_h)], fill=el.mix(cap, (0, 0, 0), 0.3), width=1)
    ly0, ly1 = h * float(rng.uniform(0.42, 0.52)), h * float(rng.uniform(0.75, 0.9))
    label = Image.new("RGB", (w, int(ly1 - ly0)), pal.primary)
    ld = ImageDraw.Draw(label)
    lw, lh = label.size
    ld.rectangle((0, 0, lw, lh * 0.08), fill=pal.accent)
    ld.rectangle((0, lh * 0.92, lw, lh), fill=pal.accent)
    if rng.random() < 0.3:
        el.draw_text_fit(ld, (lw * 0.08, lh * 0.1, lw * 0.92, lh * 0.4), ident.brand,
                         ident.display, el.ink_on(pal.primary))
        _barcode_patch(label, (lw * 0.12, lh * 0.45, lw * 0.88, lh * 0.45 + lw * 0.45), ident)
    elif rng.random() < 0.5:
        el.rotated_text(label, (int(lw * 0.1), int(lh * 0.1), int(lw * 0.9), int(lh * 0.9)),
                        ident.brand, ident.display, el.ink_on(pal.primary), 90)
    else:
        el.draw_text_fit(ld, (lw * 0.08, lh * 0.12, lw * 0.92, lh * 0.55), ident.brand,
                         ident.display, el.ink_on(pal.primary))
        el.draw_text_fit(ld, (lw * 0.12, lh * 0.58, lw * 0.88, lh * 0.75), ident.product,
                         ident.text, el.ink_on(pal.primary))
        el.draw_text_fit(ld, (lw * 0.2, lh * 0.77, lw * 0.8, lh * 0.9), ident.qty, ident.text,
                         el.ink_on(pal.primary))
    layer.paste(label, (0, int(ly0)), mask.crop((0, int(ly0), w, int(ly0) + lh)))
    layer.putalpha(mask)
    mult, spec = sh.cylinder(w, h, rng, float(rng.uniform(0.5, 0.9)))
    return sh.apply_shading(layer, mult, spec)


def bag(rng: np.random.Generator, unit: float, ident: Identity) -> Image.Image:
    """Pillow bag (crisps, coffee): crimped seals, bulging sides, window, wrinkles, sheen."""
    w = int(unit * rng.uniform(0.55, 0.85))
    h = int(min(unit * 1.2, w * rng.uniform(1.05, 1.45)))
    pal = ident.pal
    seal = h * 0.07
    bulge = w * 0.04
    pts = _bag_outline(w, h, seal, bulge, int(rng.integers(10, 20)))
    face = sh.gradient_image(w, h, pal.primary, el.mix(pal.primary, pal.dark, 0.25))
    draw = ImageDraw.Draw(face)
    back = rng.random() < 0.25
    if back:
        inner = face.crop((0, int(seal), w, int(h - seal)))
        inner.paste(pal.light, (0, 0, inner.size[0], inner.size[1]))
        _back_design(inner, rng, ident)
        face.paste(inner, (0, int(seal)))
    ridge = el.mix(pal.primary, (0, 0, 0), 0.25)
    for yy in (0, h - seal):
        for i in range(int(w / 4)):
            x = i * 4
            draw.line([(x, yy), (x, yy + seal)], fill=ridge, width=1)
    if not back:
        _bag_window(draw, rng, ident, w, h)
        el.draw_text_fit(draw, (w * 0.1, h * 0.14, w * 0.9, h * 0.36), ident.brand,
                         ident.display, el.ink_on(pal.primary))
        rib = (w * 0.15, h * 0.38, w * 0.85, h * 0.46)
        draw.rectangle(rib, fill=pal.accent)
        el.draw_text_fit(draw, rib, ident.claim, ident.bold, el.ink_on(pal.accent))
        el.draw_text_fit(draw, (w * 0.55, h * 0.84, w * 0.92, h * 0.9), ident.qty, ident.text,
                         el.ink_on(pal.primary))
    layer = face.convert("RGBA")
    _maybe_price_tag(layer, rng, ident, (w * 0.05, h * 0.1, w * 0.95, h * 0.9), p=0.25)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    layer.putalpha(mask)
    # wrinkles: low-frequency noise upsampled; plus a soft horizontal pillow profile
    small = rng.standard_normal((6, 5)).astype(np.float32)
    wr = np.asarray(Image.fromarray(small, "F").resize((w, h), Image.Resampling.BICUBIC))
    u = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    mult = (0.8 + 0.25 * np.sqrt(np.clip(1 - u**2, 0, 1))) * (1 + 0.08 * wr)
    spec = 0.3 * np.clip(wr - 1.0, 0, None)
    return sh.apply_shading(layer, mult, spec)


def _bag_outline(w: int, h: int, seal: float, bulge: float, teeth: int) -> list[tuple[float, float]]:
    """The bag's silhouette: crimped (zigzag) seals at top and bottom, sides bulging out."""
    top = [(bulge + (w - 2 * bulge) * i / teeth, 0 if i % 2 == 0 else seal * 0.25) for i in range(teeth + 1)]
    right = [(w - bulge + bulge * math.sin(math.pi * (i / 12)) - 1, h * (i / 12)) for i in range(1, 12)]
    bottom = [(bulge + (w - 2 * bulge) * i / teeth, h - 1 - (0 if i % 2 else seal * 0.25))
              for i in range(teeth, -1, -1)]
    left = [(bulge - bulge * math.sin(math.pi * (i / 12)), h * (i / 12)) for i in range(11, 0, -1)]
    return top + right + bottom + left


def _bag_window(draw: ImageDraw.ImageDraw, rng: np.random.Generator, ident: Identity, w: int, h: int) -> None:
    """The front's window onto the food (60 %) or a band with the product name."""
    pal = ident.pal
    if rng.random() < 0.6:
        cx, cy = w / 2, h * 0.66
        rx, ry = w * 0.3, h * 0.16
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=pal.light)
        _food(draw, (cx - rx * 0.8, cy - ry * 0.8, cx + rx * 0.8, cy + ry * 0.8), rng)
    else:
        draw.rectangle((0, h * 0.55, w, h * 0.8), fill=pal.secondary)
        el.draw_text_fit(draw, (w * 0.1, h * 0.57, w * 0.9, h * 0.78), ident.product,
                         ident.bold, el.ink_on(pal.secondary))


def jar(rng: np.random.Generator, unit: float, ident: Identity) -> Image.Image:
    """Glass jar: ribbed lid, coloured contents, paper label."""
    w = int(unit * rng.uniform(0.45, 0.65))
    h = int(min(unit * 1.1, w * rng.uniform(1.0, 1.35)))
    pal = ident.pal
    content = [(150, 20, 30), (220, 150, 30), (120, 70, 30), (80, 120, 40), (230, 200, 150),
               (200, 60, 20)][int(rng.integers(0, 6))]
    lid = [(200, 170, 60), (180, 20, 20), (30, 110, 40), (240, 240, 240), (30, 30, 30),
           pal.accent][int(rng.integers(0, 6))]
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    mask = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask)
    lid_h = h * 0.17
    body = (0, lid_h * 0.8, w - 1, h - 1)
    draw.rounded_rectangle(body, radius=w * 0.12, fill=content)
    md.rounded_rectangle(body, radius=w * 0.12, fill=255)
    lid_box = (w * 0.05, 0, w * 0.95, lid_h)
    draw.rectangle(lid_box, fill=lid)
    md.rectangle(lid_box, fill=255)
    for i in range(1, int(w / 5)):
        x = w * 0.05 + i * 5
        draw.line([(x, 0), (x, lid_h)], fill=el.mix(lid, (0, 0, 0), 0.25), width=1)
    ly0, ly1 = h * float(rng.uniform(0.3, 0.4)), h * float(rng.uniform(0.78, 0.88))
    paper = pal.light if rng.random() < 0.5 else pal.primary
    draw.rectangle((0, ly0, w, ly1), fill=paper)
    draw.rectangle((0, ly0, w, ly0 + (ly1 - ly0) * 0.06), fill=pal.accent)
    ink = el.ink_on(paper)
    el.draw_text_fit(draw, (w * 0.1, ly0 + (ly1 - ly0) * 0.1, w * 0.9, ly0 + (ly1 - ly0) * 0.5),
                     ident.brand, ident.display, ink)
    el.draw_text_fit(draw, (w * 0.15, ly0 + (ly1 - ly0) * 0.52, w * 0.85,
                            ly0 + (ly1 - ly0) * 0.72), ident.product, ident.text, ink)
    if rng.random() < 0.35:
        bw = w * 0.4
        _barcode_patch(layer, (w * 0.55, ly1 - bw * 0.6 - 2, w * 0.55 + bw, ly1 - 2), ident)
        el.draw_fine_print(draw, (w * 0.08, ly0 + (ly1 - ly0) * 0.75, w * 0.5, ly1 - 2), rng,
                           ident.text, ink)
    else:
        el.draw_fine_print(draw, (w * 0.15, ly0 + (ly1 - ly0) * 0.75, w * 0.85, ly1 - 2), rng,
                           ident.text, ink)
    _maybe_price_tag(layer, rng, ident, (w * 0.1, 0, w * 0.9, lid_h * 1.2), p=0.2)
    layer.putalpha(mask)
    mult, spec = sh.cylinder(w, h, rng, float(rng.uniform(0.4, 0.8)))
    return sh.apply_shading(layer, mult, spec)


def fruit(rng: np.random.Generator, unit: float, ident: Identity) -> Image.Image:
    """1-4 fruit-like blobs with radial shading, highlights, stems and a PLU sticker."""
    size = int(unit * rng.uniform(0.55, 0.9))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    base = [(200, 30, 30), (120, 180, 40), (240, 200, 40), (245, 140, 20), (110, 30, 60),
            (180, 120, 60), (230, 80, 60)][int(rng.integers(0, 7))]
    n = int(rng.integers(1, 5))
    for _ in range(n):
        r = size * float(rng.uniform(0.18, 0.3)) * (1.3 if n == 1 else 1.0)
        cx = float(rng.uniform(r, size - r))
        cy = float(rng.uniform(r, size - r))
        ecc = float(rng.uniform(0.8, 1.15))
        ang = np.linspace(0, 2 * math.pi, 28, endpoint=False)
        wob = 1 + 0.05 * np.sin(ang * int(rng.integers(2, 5)) + float(rng.uniform(0, 6)))
        col = el.mix(base, (0, 0, 0), float(rng.uniform(0, 0.2)))
        for j in range(14):  # concentric shells: radial shading from the light side
            s = 1 - j / 15
            pts = [(cx + r * s * wob[i] * math.cos(a) - j * r * 0.04,
                    cy + r * s * ecc * wob[i] * math.sin(a) - j * r * 0.03)
                   for i, a in enumerate(ang)]
            draw.polygon(pts, fill=el.mix(el.mix(col, (0, 0, 0), 0.4),
                                          el.mix(col, (255, 255, 255), 0.15), min(1, j / 10)))
        hr = r * 0.18
        draw.ellipse((cx - r * 0.45 - hr, cy - r * 0.5 - hr * 0.7, cx - r * 0.45 + hr,
                      cy - r * 0.5 + hr * 0.7), fill=el.mix(col, (255, 255, 255), 0.7))
        draw.line([(cx, cy - r * ecc * 0.95), (cx + r * 0.1, cy - r * ecc * 1.15)],
                  fill=(90, 60, 20), width=max(1, int(r * 0.07)))
    if rng.random() < 0.7:  # PLU sticker on the last fruit
        sw = size * 0.22
        sx, sy = float(rng.uniform(size * 0.25, size * 0.6)), float(rng.uniform(size * 0.3, size * 0.6))
        stick = [(255, 255, 255), (30, 120, 200), (250, 200, 30)][int(rng.integers(0, 3))]
        draw.ellipse((sx, sy, sx + sw, sy + sw * 0.7), fill=stick, outline=(40, 40, 40))
        el.draw_text_fit(draw, (sx + sw * 0.15, sy + sw * 0.1, sx + sw * 0.85, sy + sw * 0.45),
                         str(int(rng.integers(3000, 4999))), ident.bold, el.ink_on(stick))
        el.draw_text_fit(draw, (sx + sw * 0.2, sy + sw * 0.45, sx + sw * 0.8, sy + sw * 0.6),
                         ident.brand, ident.text, el.ink_on(stick))
    return layer


DRAWERS: dict[str, Callable[[np.random.Generator, float, Identity], Image.Image]] = {
    "carton": carton,
    "can": can,
    "bottle": bottle,
    "bag": bag,
    "jar": jar,
    "fruit": fruit,
}
#: Relative frequencies of product kinds on the belt.
KIND_WEIGHTS: dict[str, float] = {"carton": 0.3, "can": 0.15, "bottle": 0.13, "bag": 0.17,
                                  "jar": 0.12, "fruit": 0.13}
