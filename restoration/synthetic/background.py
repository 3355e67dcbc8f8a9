"""Checkout surfaces: rubber conveyor belts, brushed-metal and plastic trays, scanner glass.

Each returns a float32 (H, W, 3) array in [0, 1]; all textures are analytic or upsampled noise
(no files).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None])


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int = 6) -> np.ndarray:
    """Smooth zero-mean noise, unit-ish std (bicubic upsampling of a coarse grid)."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(small, "F").resize((w, h), Image.Resampling.BICUBIC))


def _streaks(rng: np.random.Generator, h: int, w: int, angle: float, scale: float) -> np.ndarray:
    """1-D noise extruded along ``angle``: belt ridges wear, brushed-metal grain."""
    x, y = _coords(h, w)
    t = -math.sin(angle) * x + math.cos(angle) * y
    t = t - t.min()
    n = int(t.max()) + 2
    line = rng.standard_normal(n).astype(np.float32) * scale
    return line[t.astype(np.int64)]


def conveyor(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = float(rng.uniform(0.06, 0.3))
    tint = np.array([1.0, 1.0, 1.0], np.float32) + rng.uniform(-0.12, 0.12, 3).astype(np.float32)
    if rng.random() < 0.2:  # coloured belts (green / blue) exist too
        tint = np.array([0.6, 1.1, 0.8] if rng.random() < 0.5 else [0.6, 0.8, 1.2], np.float32)
    angle = (0.0 if rng.random() < 0.5 else math.pi / 2) + float(rng.normal(0, 0.05))
    period = float(rng.uniform(3.0, 10.0))
    x, y = _coords(h, w)
    t = -math.sin(angle) * x + math.cos(angle) * y
    ridge = 0.5 + 0.5 * np.sin(2 * math.pi * t / period)
    v = base * (1 + float(rng.uniform(0.05, 0.35)) * (ridge - 0.5))
    v = v * (1 + 0.08 * _lowfreq(rng, h, w)) + _streaks(rng, h, w, angle, 0.01)
    v = v + rng.standard_normal((h, w)).astype(np.float32) * 0.012
    img = v[..., None] * tint
    if rng.random() < 0.3:  # a seam across the belt
        s = float(rng.uniform(0, max(h, w)))
        along = math.cos(angle) * x + math.sin(angle) * y
        img = img * (1 - 0.5 * np.exp(-((along - s) / 1.5) ** 2))[..., None]
    if rng.random() < 0.3:  # side rail along the belt edge
        width = float(rng.uniform(0.08, 0.25)) * min(h, w)
        edge = t if rng.random() < 0.5 else t.max() - t
        rail = np.clip((width - edge) / 2.0, 0, 1)[..., None]
        metal = float(rng.uniform(0.5, 0.8)) + 0.1 * np.tanh((width - edge) / width * 3)[..., None]
        img = img * (1 - rail) + metal * rail
    if rng.random() < 0.15:  # plastic divider bar lying on the belt
        col = rng.uniform(0.1, 0.9, 3).astype(np.float32)
        c = float(rng.uniform(0.1, 0.9)) * max(h, w)
        half = float(rng.uniform(0.03, 0.07)) * min(h, w)
        along = math.cos(angle) * x + math.sin(angle) * y
        bar = np.clip((half - np.abs(along - c)) / 1.5, 0, 1)
        prof = 0.75 + 0.35 * np.cos(np.clip((along - c) / half, -1, 1) * math.pi / 2)
        img = img * (1 - bar[..., None]) + (col * prof[..., None]) * bar[..., None]
    return img


def metal_tray(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = float(rng.uniform(0.45, 0.8))
    angle = float(rng.uniform(0, math.pi))
    v = base + _streaks(rng, h, w, angle, 0.03) + 0.05 * _lowfreq(rng, h, w, 4)
    x, _ = _coords(h, w)
    g = float(rng.uniform(-0.15, 0.15))
    v = v + g * (x / w - 0.5) + rng.standard_normal((h, w)).astype(np.float32) * 0.008
    tint = np.array([0.98, 1.0, 1.03], np.float32)
    return v[..., None] * tint


def plastic_tray(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    col = [(0.15, 0.3, 0.6), (0.2, 0.45, 0.25), (0.6, 0.15, 0.15), (0.12, 0.12, 0.12),
           (0.75, 0.75, 0.72), (0.85, 0.6, 0.2)][int(rng.integers(0, 6))]
    img = np.broadcast_to(np.asarray(col, np.float32), (h, w, 3)).copy()
    img *= (1 + 0.06 * _lowfreq(rng, h, w, 5))[..., None]
    x, y = _coords(h, w)
    inset = float(rng.uniform(0.05, 0.2)) * min(h, w)
    d = np.minimum(np.minimum(x - inset, (w - 1 - inset) - x), np.minimum(y - inset, h - 1 - inset - y))
    rim = np.exp(-(d / 2.0) ** 2)  # a raised rim: bright line at the inset edge
    outside = (d < 0)[..., None]
    img = np.where(outside, img * 0.8, img) + 0.25 * rim[..., None]
    return img + rng.standard_normal((h, w, 1)).astype(np.float32) * 0.006


def scanner_glass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    x, y = _coords(h, w)
    base = float(rng.uniform(0.03, 0.12))
    a = float(rng.uniform(0, 2 * math.pi))
    refl = np.clip(math.cos(a) * x / w + math.sin(a) * y / h, 0, 1) ** 2
    v = base + float(rng.uniform(0.05, 0.2)) * refl
    img = v[..., None] * np.array([0.9, 1.0, 1.15], np.float32)
    img = np.broadcast_to(img, (h, w, 3)).copy()
    if rng.random() < 0.6:  # the red scan line
        c = float(rng.uniform(0.2, 0.8)) * h
        line = np.exp(-((y - c) / 1.2) ** 2) * np.ones_like(x)
        img += line[..., None] * np.array([0.8, 0.05, 0.05], np.float32)
    for _ in range(int(rng.integers(0, 5))):  # scratches
        ang = float(rng.uniform(0, math.pi))
        off = float(rng.uniform(0, max(h, w)))
        dist = np.abs(-math.sin(ang) * x + math.cos(ang) * y - off)
        img += (0.06 * np.exp(-((dist / 0.7) ** 2)))[..., None]
    return img + rng.standard_normal((h, w, 1)).astype(np.float32) * 0.01


SURFACES = (conveyor, metal_tray, plastic_tray, scanner_glass)
SURFACE_WEIGHTS = (0.55, 0.15, 0.15, 0.15)


def surface(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random checkout surface, float32 (h, w, 3) clipped to [0, 1]."""
    fn = SURFACES[int(rng.choice(len(SURFACES), p=SURFACE_WEIGHTS))]
    return np.clip(fn(rng, h, w), 0.0, 1.0).astype(np.float32)
