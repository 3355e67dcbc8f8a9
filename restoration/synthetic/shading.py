"""Shading of the product drawers (restoration/synthetic/products.py): Lambert + highlight maps,
gradients, alpha."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from restoration.synthetic.elements import RGB


def apply_shading(
    layer: Image.Image, mult: np.ndarray, spec: np.ndarray | None = None
) -> Image.Image:
    """rgb <- rgb * mult, then screen-blend a specular map (both (H, W) or broadcastable)."""
    a = np.asarray(layer, dtype=np.float32) / 255.0
    rgb = a[..., :3] * mult[..., None]
    if spec is not None:
        s = spec[..., None]
        rgb = rgb + s * (1.0 - rgb)
    out = np.concatenate([np.clip(rgb, 0, 1), a[..., 3:]], axis=-1)
    return Image.fromarray((out * 255 + 0.5).astype(np.uint8), "RGBA")


def cylinder(w: int, h: int, rng: np.random.Generator, gloss: float) -> tuple:
    """Lambert + Gaussian highlight across a vertical cylinder of width w."""
    u = np.linspace(-0.98, 0.98, w, dtype=np.float32)
    phi = float(rng.uniform(-0.6, 0.6))
    lam = np.clip(np.cos(np.arcsin(u) - phi), 0, 1)
    mult = 0.3 + 0.75 * lam
    u0 = math.sin(phi) * 0.7 + float(rng.uniform(-0.1, 0.1))
    spec = gloss * np.exp(-(((u - u0) / float(rng.uniform(0.04, 0.1))) ** 2))
    spec = spec + 0.35 * gloss * np.exp(-(((u + 0.85) / 0.05) ** 2))  # rim light
    return np.broadcast_to(mult, (h, w)), np.broadcast_to(spec, (h, w))


def linear_gradient(w: int, h: int, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    ang = float(rng.uniform(0, 2 * math.pi))
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    t = (math.cos(ang) * x + math.sin(ang) * y) * 0.5 + 0.5
    return lo + (hi - lo) * t


def gradient_image(w: int, h: int, c0: RGB, c1: RGB) -> Image.Image:
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.asarray(c0, np.float32) * (1 - t) + np.asarray(c1, np.float32) * t
    return Image.fromarray(np.broadcast_to(img, (h, w, 3)).astype(np.uint8), "RGB")


def with_alpha(rgb: Image.Image, mask: Image.Image) -> Image.Image:
    out = rgb.convert("RGBA")
    out.putalpha(mask)
    return out
