"""Scene composition: 1-3 products with perspective, drop shadows and lighting on a surface.

Drawing happens at ``SUPERSAMPLE`` x the output resolution and is box-filtered down, so edges,
text and barcode modules are anti-aliased the way a camera's pixel integrates light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

from restoration.synthetic import background
from restoration.synthetic.products import DRAWERS, KIND_WEIGHTS, identity

SUPERSAMPLE = 2
#: Bumped whenever the renders for a given seed change: put it in cache keys and checkpoint
#: metadata so an image bank is never reused across renderer versions.
RENDERER_VERSION = 1
#: Training renders use seeds in [0, TRAIN_SEEDS_END).
TRAIN_SEEDS_END = 1_000_000
#: Held-out evaluation and benchmark renders use seeds >= HELDOUT_SEED_START (never trained on).
HELDOUT_SEED_START = 10_000_000

_KINDS = tuple(KIND_WEIGHTS)
_KIND_P = np.asarray([KIND_WEIGHTS[k] for k in _KINDS]) / sum(KIND_WEIGHTS.values())


class RenderError(ValueError):
    """Raised for an invalid seed or canvas size."""


def is_heldout(seed: int) -> bool:
    """True for seeds reserved for evaluation (>= HELDOUT_SEED_START)."""
    return seed >= HELDOUT_SEED_START


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """PIL PERSPECTIVE coefficients mapping output (dst) points to input (src) points."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(dst, src, strict=True)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    return tuple(float(c) for c in np.linalg.solve(a, b))


def _place(
    layer: Image.Image, centre: tuple[float, float], angle: float, jitter: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Destination quad corners (4, 2) of a rotated, slightly tilted (perspective) layer."""
    pw, ph = layer.size
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], dtype=np.float64)
    rel = src - np.array([pw / 2, ph / 2])
    c, s = math.cos(angle), math.sin(angle)
    rot = rel @ np.array([[c, s], [-s, c]])
    return rot + np.asarray(centre) + rng.normal(0, jitter * max(pw, ph), size=(4, 2))


def _composite(
    canvas: Image.Image, layer: Image.Image, dst: np.ndarray, shadow_off: np.ndarray,
    shadow_blur: float, shadow_strength: float,
) -> None:
    """Drop shadow, then alpha-over of the perspective-warped layer, in place on an RGB canvas.

    Both warps only cover the bounding box of the destination quad (plus the blur margin).
    """
    w, h = canvas.size
    pw, ph = layer.size
    src = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], dtype=np.float64)
    margin = 2 * shadow_blur + 2
    quad = np.concatenate([dst, dst + shadow_off])
    x0 = int(max(0, math.floor(quad[:, 0].min() - margin)))
    y0 = int(max(0, math.floor(quad[:, 1].min() - margin)))
    x1 = int(min(w, math.ceil(quad[:, 0].max() + margin)))
    y1 = int(min(h, math.ceil(quad[:, 1].max() + margin)))
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    box = (x1 - x0, y1 - y0)
    origin = np.array([x0, y0], dtype=np.float64)
    shadow = layer.getchannel("A").transform(
        box, Image.Transform.PERSPECTIVE, _perspective_coeffs(dst + shadow_off - origin, src),
        Image.Resampling.BILINEAR)
    shadow = shadow.filter(ImageFilter.BoxBlur(shadow_blur)).point(
        lambda v: int(v * shadow_strength))
    region = canvas.crop((x0, y0, x1, y1))
    region.paste((0, 0, 0), (0, 0), shadow)
    warped = layer.convert("RGBa").transform(
        box, Image.Transform.PERSPECTIVE, _perspective_coeffs(dst - origin, src),
        Image.Resampling.BILINEAR).convert("RGBA")
    region.paste(warped, (0, 0), warped)
    canvas.paste(region, (x0, y0))


def render_canvas(
    seed: int, height: int, width: int, fonts: Sequence[str] = ()
) -> np.ndarray:
    """A checkout scene (height, width, 3) uint8, fully determined by ``seed`` (and fonts).

    One main product near the centre, 0-2 neighbours partly in frame, on a belt or tray.
    Object scale follows the shorter side, so a larger canvas shows the same kind of scene at
    a higher resolution.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise RenderError(f"seed must be a non-negative int, got {seed!r}")
    if height < 8 or width < 8:
        raise RenderError(f"canvas must be at least 8x8, got {height}x{width}")
    rng = np.random.default_rng(int(seed))
    hh, ww = height * SUPERSAMPLE, width * SUPERSAMPLE
    unit = float(min(hh, ww))
    surface = background.surface(rng, hh, ww)
    canvas = Image.fromarray((surface * 255 + 0.5).astype(np.uint8), "RGB")
    light = float(rng.uniform(0, 2 * math.pi))
    off = unit * float(rng.uniform(0.01, 0.04))
    shadow_off = np.array([math.cos(light) * off, math.sin(light) * off])
    shadow_blur = unit * float(rng.uniform(0.01, 0.03))
    shadow_strength = float(rng.uniform(0.35, 0.65))
    n_side = int(rng.choice(3, p=[0.45, 0.35, 0.2]))
    upright = rng.random() < 0.5
    placements = []
    for _ in range(n_side):  # neighbours: centred near an edge, partly out of frame
        a = float(rng.uniform(0, 2 * math.pi))
        r = float(rng.uniform(0.45, 0.65))
        placements.append(((ww / 2 + math.cos(a) * r * ww, hh / 2 + math.sin(a) * r * hh),
                           float(rng.uniform(0.7, 1.0))))
    placements.append(((ww / 2 + float(rng.normal(0, 0.08)) * ww,
                        hh / 2 + float(rng.normal(0, 0.08)) * hh), float(rng.uniform(0.85, 1.3))))
    for centre, scale in placements:
        kind = _KINDS[int(rng.choice(len(_KINDS), p=_KIND_P))]
        ident = identity(rng, fonts)
        layer = DRAWERS[kind](rng, unit * scale, ident)
        angle = float(rng.normal(0, 0.25)) if upright else float(rng.uniform(-math.pi, math.pi))
        dst = _place(layer, centre, angle, 0.035, rng)
        _composite(canvas, layer, dst, shadow_off, shadow_blur, shadow_strength)
    # global illumination (at output resolution): smooth gradient, vignette, colour cast
    out = np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0
    x = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    grad = 1 + float(rng.uniform(-0.12, 0.12)) * x + float(rng.uniform(-0.12, 0.12)) * y
    vign = 1 - float(rng.uniform(0.0, 0.15)) * (x**2 + y**2) / 2
    cast = (1 + rng.uniform(-0.05, 0.05, 3)).astype(np.float32)
    out *= (grad * vign)[..., None] * cast
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_product(seed: int, size: int = 128, fonts: Sequence[str] = ()) -> np.ndarray:
    """A square render (size, size, 3) uint8; see :func:`render_canvas`."""
    return render_canvas(seed, size, size, fonts)


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> (B, 3, H, W) float32 in [-1, 1]."""
    arr = np.stack(images).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0


def render_batch(
    seeds: Sequence[int], size: int = 128, fonts: Sequence[str] = ()
) -> torch.Tensor:
    """Renders of ``seeds`` as (B, 3, size, size) float32 in [-1, 1]."""
    return to_tensor([render_product(int(s), size, fonts) for s in seeds])
