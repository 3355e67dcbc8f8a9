"""The bench's `real` suites: real photographs blurred by the project's kernel generators.

``checkout-restore bench --photos DIR --suites real`` builds frames from the photographs in DIR
(a folder of PNG/JPEG files, e.g. a copy of LIVE1 -- never a folder the priors were trained on):
a random crop of a photograph, blurred by a kernel of the suite's kind with a *valid* convolution
(the crop is taken K - 1 px larger, so borders carry real content, not padding), plus Gaussian
noise, 8-bit quantisation and, for the `-jpeg` suite, JPEG compression. Suites:

| suite | kernel | noise std (of [0, 1]) | extra |
|---|---|---|---|
| real-motion | curved / jerky camera-shake trajectories | 0.005-0.02 | |
| real-gaussian | anisotropic Gaussians | 0.005-0.02 | |
| real-near-sharp | identity, sigma 0.3-0.6 px Gaussian or 1-3 px line | 0.005-0.02 | |
| real-motion-lownoise, real-gaussian-lownoise | as above | 0.001-0.005 | good light |
| real-motion-jpeg | motion | 0.002-0.01 | JPEG quality 70-92 |
| real-motion+occlusion | motion | 0.005-0.02 | a hand (mask sidecar) |
| real-native-motion, real-native-gaussian | as above, 9-41 px | 0.002-0.02 | 256-512 px crops |

Frame i of a suite takes photograph (i * 7 + suite offset) mod N of the sorted folder, so 12
frames of a suite come from 12 different photographs. Deterministic per (suite, index).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flows.evaluation.frames import sidecar_files
from restoration.rng import generator_for
from restoration.synthetic.degrade import observe

KernelFn = Callable[[int, torch.Generator], torch.Tensor]
"""(kernel size K, generator) -> one kernel (1, 1, K, K) float64."""
OccluderFn = Callable[[int, int, torch.Generator], tuple[np.ndarray, np.ndarray]]
"""(height, width, generator) -> (hand mask (H, W) bool, colour (H, W, 3) on [0, 1])."""

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg")
NATIVE_KERNEL_SIZES = tuple(range(9, 42, 2))


class PhotoSuiteError(ValueError):
    """The photographs folder is missing or holds no usable photographs."""


@dataclass(frozen=True)
class PhotoSuite:
    """How one real-photo suite degrades a photograph."""

    kernel: str  # "motion", "gaussian" or "near-sharp" (the bench's kernel generators)
    noise: tuple[float, float]  # noise std range on [0, 1], drawn uniformly per frame
    jpeg: tuple[int, int] | None = None  # JPEG quality range, or no compression
    occluded: bool = False
    native: bool = False  # 256-512 px crops and 9-41 px kernels instead of `size` and the bench's


PHOTO_SUITES: dict[str, PhotoSuite] = {
    "real-motion": PhotoSuite("motion", (0.005, 0.02)),
    "real-gaussian": PhotoSuite("gaussian", (0.005, 0.02)),
    "real-near-sharp": PhotoSuite("near-sharp", (0.005, 0.02)),
    "real-motion-lownoise": PhotoSuite("motion", (0.001, 0.005)),
    "real-gaussian-lownoise": PhotoSuite("gaussian", (0.001, 0.005)),
    "real-motion-jpeg": PhotoSuite("motion", (0.002, 0.01), jpeg=(70, 92)),
    "real-motion+occlusion": PhotoSuite("motion", (0.005, 0.02), occluded=True),
    "real-native-motion": PhotoSuite("motion", (0.002, 0.02), native=True),
    "real-native-gaussian": PhotoSuite("gaussian", (0.002, 0.02), native=True),
}
PHOTO_ALIASES: dict[str, tuple[str, ...]] = {
    "real": ("real-motion", "real-gaussian", "real-near-sharp"),
    "real-all": tuple(s for s, p in PHOTO_SUITES.items() if not p.native),
    "real-native": tuple(s for s, p in PHOTO_SUITES.items() if p.native),
}
SEED_OFFSET = 700_000  # real-photo frames draw their own seeds


def photo_paths(folder: str | Path) -> list[Path]:
    """The photographs of `folder`, sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise PhotoSuiteError(f"--photos {folder}: not a folder")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise PhotoSuiteError(f"--photos {folder}: no .png/.jpg photographs in it")
    return paths


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("RGB"))


@dataclass(frozen=True)
class PhotoFrameSpec:
    """What a real-photo frame needs from the bench (its spec and its generators)."""

    photos: str
    size: int
    kernel_sizes: tuple[int, ...]
    kernels: dict[str, KernelFn]
    occluder: OccluderFn


def photo_files(spec: PhotoFrameSpec, suite: str, index: int
                ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """One real-photo frame and its sidecars as encoded bytes, and its manifest record."""
    ps = PHOTO_SUITES[suite]
    paths = photo_paths(spec.photos)
    offset = list(PHOTO_SUITES).index(suite)
    path = paths[(index * 7 + offset) % len(paths)]
    seed = SEED_OFFSET + offset * 10_000 + index
    g = generator_for(f"bench/{suite}/{index}/{seed}")
    sizes = NATIVE_KERNEL_SIZES if ps.native else spec.kernel_sizes
    ksize = sizes[int(torch.randint(len(sizes), (1,), generator=g))]
    k = spec.kernels[ps.kernel](ksize, g).double()
    k = k / k.sum()
    photo = _load_rgb(path)
    ph, pw = photo.shape[:2]
    if ps.native:
        side = int(torch.randint(256, 513, (1,), generator=g))
        h, w = min(side, ph - ksize + 1), min(side, pw - ksize + 1)
    else:
        h = w = spec.size
    if h < 16 or w < 16 or h + ksize - 1 > ph or w + ksize - 1 > pw:
        raise PhotoSuiteError(f"{path.name} ({pw}x{ph}) is too small for a {w}x{h} frame")
    oy = int(torch.randint(ph - (h + ksize - 1) + 1, (1,), generator=g))
    ox = int(torch.randint(pw - (w + ksize - 1) + 1, (1,), generator=g))
    canvas = photo[oy : oy + h + ksize - 1, ox : ox + w + ksize - 1]
    mask = coverage = None
    occlude = None
    if ps.occluded:  # drawn before the noise level: the set's draw order
        hand, colour = spec.occluder(h, w, g)
        mask, coverage = ~hand, float(hand.mean())
        occlude = lambda y: np.where(hand[..., None], colour, y)  # noqa: E731
    sigma = _uniform(g, *ps.noise)
    y8, sharp = observe(canvas, k, sigma, g, method="direct", occlude=occlude)
    quality = None
    if ps.jpeg is not None:
        quality = int(torch.randint(ps.jpeg[0], ps.jpeg[1] + 1, (1,), generator=g))
        y8 = _jpeg(y8, quality)
    fid = f"{suite}/f{index:03d}"
    files = sidecar_files(fid, y8, sharp, k, mask)
    record = {"key": f"{fid}.png", "suite": suite, "seed": seed, "kernel_size": ksize,
              "coverage": coverage, "photo": path.name, "height": h, "width": w,
              "noise_sigma": sigma, "jpeg_quality": quality}
    return files, record
