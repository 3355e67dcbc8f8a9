"""The generated benchmark set: suites (which kernels, which occluder), the spec stored as
``bench.json``, and the deterministic generator (same bytes on every run: the draw order of each
frame's generator is part of the contract; README "Restoration benchmark")."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from flows.evaluation.bench_native import ALIASES as NATIVE_ALIASES
from flows.evaluation.bench_native import native_files
from flows.evaluation.bench_photos import (
    PHOTO_ALIASES,
    PHOTO_SUITES,
    PhotoFrameSpec,
    PhotoSuiteError,
    photo_files,
)
from flows.evaluation.frames import BenchError, sidecar_files
from restoration import kernels as kern
from restoration.rng import generator_for
from restoration.synthetic import HELDOUT_SEED_START, render_canvas
from restoration.synthetic.degrade import observe
from storage.base import ObjectStore

SuiteKernelFn = Callable[[int, torch.Generator], torch.Tensor]
"""(kernel size K, generator) -> one sum-1 kernel (1, 1, K, K) float64, centre of mass centred."""


def _kinds(*kinds: str) -> SuiteKernelFn:
    return lambda size, g: kern.sample_kernels(1, size, g, kinds).double()


def near_sharp_kernel(size: int, g: torch.Generator) -> torch.Tensor:
    """Little or no blur, drawn uniformly among: the identity; an anisotropic Gaussian with major
    sigma 0.3-0.6 px; a linear motion of 1-3 px (what a steady hand or a slightly soft lens gives)."""
    kind = int(torch.randint(3, (1,), generator=g))
    if kind == 0:
        k = torch.zeros(size, size, dtype=torch.float64)
        k[size // 2, size // 2] = 1.0
    elif kind == 1:
        sx = 0.3 + 0.3 * float(torch.rand(1, generator=g, dtype=torch.float64))
        sy = sx * (0.5 + 0.5 * float(torch.rand(1, generator=g, dtype=torch.float64)))
        k = kern.gaussian_kernel(size, sx, sy, math.pi * float(torch.rand(1, generator=g))).double()
    else:
        length = 1.0 + 2.0 * float(torch.rand(1, generator=g, dtype=torch.float64))
        k = kern.line_kernel(size, length, math.pi * float(torch.rand(1, generator=g)))
    return (k / k.sum())[None, None]


#: suite -> kernel generator. The whole registry of generated suites (order fixes the seeds).
SUITE_KERNELS: dict[str, SuiteKernelFn] = {
    "motion": _kinds("motion"),
    "gaussian": _kinds("gaussian"),
    "motion+occlusion": _kinds("motion"),
    "near-sharp": near_sharp_kernel,
}
#: suites whose frames get a hand-like occluder (mask sidecar).
OCCLUDED_SUITES: frozenset[str] = frozenset({"motion+occlusion"})
SUITES: tuple[str, ...] = tuple(SUITE_KERNELS)
#: suite aliases on the command line (native = its two suites, real = three photo suites, ...)
ALIASES: dict[str, tuple[str, ...]] = NATIVE_ALIASES | PHOTO_ALIASES
MANIFEST = "bench.json"
BENCH_SEED_START = HELDOUT_SEED_START + 100_000
_SKIN = ((236, 188, 160), (224, 172, 135), (198, 134, 96), (160, 105, 72), (120, 80, 56),
         (250, 214, 185))  # fmt: skip


@dataclass(frozen=True)
class BenchSpec:
    """What the generated benchmark set contains; stored as ``bench.json`` next to it."""

    suites: tuple[str, ...] = SUITES
    frames_per_suite: int = 12
    size: int = 128
    kernel_sizes: tuple[int, ...] = tuple(range(15, 32, 2))
    noise_sigma: float = 0.02
    seed_start: int = BENCH_SEED_START
    occlusion: tuple[float, float] = (0.10, 0.25)
    fonts: tuple[str, ...] = ()
    photos: str = ""  # folder of real photographs for the real-* suites (--photos)

    def validate(self) -> None:
        bad = [s for s in self.suites if s not in SUITE_FRAMES]
        if bad or not self.suites:
            raise BenchError(f"unknown suites {bad}; choose from {[*SUITE_FRAMES, *ALIASES]}")
        if self.frames_per_suite < 1 or self.size < 16:
            raise BenchError("need frames_per_suite >= 1 and size >= 16")
        if any(k % 2 == 0 or k < 7 for k in self.kernel_sizes):
            raise BenchError(f"kernel sizes must be odd and >= 7, got {self.kernel_sizes}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["fonts"] = [Path(f).name for f in self.fonts]  # names only: paths differ per machine
        d["photos"] = Path(self.photos).name if self.photos else ""
        return d


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g, dtype=torch.float64))


def _capsule(py: np.ndarray, px: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """Pixels within ``r`` of the segment a-b (points as (y, x))."""
    d = b - a
    t = ((py - a[0]) * d[0] + (px - a[1]) * d[1]) / max(float(d @ d), 1e-12)
    t = np.clip(t, 0.0, 1.0)
    return (py - a[0] - t * d[0]) ** 2 + (px - a[1] - t * d[1]) ** 2 <= r * r


def hand_occluder(
    height: int, width: int, generator: torch.Generator, coverage: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """A hand-like occluder: (hand mask (H, W) bool, colour (H, W, 3) float in [0, 1]).

    Forearm, palm (ellipse), four fingers and a thumb (capsules) enter the frame from a random
    edge; the overall scale is bisected so the hand covers a fraction drawn uniformly from
    ``coverage``. Shading darkens towards the outline (a rounded look) and along a random light
    direction; the colour is drawn from a few skin tones.
    """
    g = generator
    target = _uniform(g, *coverage)
    edge = int(torch.randint(4, (1,), generator=g))
    pos = _uniform(g, 0.25, 0.75)
    tilt = _uniform(g, -0.5, 0.5)
    depth = _uniform(g, 0.0, 0.12)
    lengths = np.array([0.16, 0.19, 0.18, 0.14]) * np.array([_uniform(g, 0.85, 1.1) for _ in range(4)])
    spread = np.array([-0.28, -0.09, 0.09, 0.28]) * _uniform(g, 0.6, 1.4) + _uniform(g, -0.2, 0.2)
    side = 1.0 if _uniform(g, 0, 1) < 0.5 else -1.0
    thumb_angle = side * _uniform(g, 0.8, 1.3)
    tone = np.array(_SKIN[int(torch.randint(len(_SKIN), (1,), generator=g))], dtype=np.float64)
    tone = np.clip(tone * _uniform(g, 0.9, 1.08) / 255.0, 0, 1)
    light = _uniform(g, 0, 2 * math.pi)

    unit = float(min(height, width))
    py, px = np.mgrid[0:height, 0:width].astype(np.float64)
    # entry point on the edge and the inward direction (y, x)
    entry, inward = {
        0: (np.array([height - 1.0, pos * width]), np.array([-1.0, 0.0])),  # bottom
        1: (np.array([0.0, pos * width]), np.array([1.0, 0.0])),  # top
        2: (np.array([pos * height, 0.0]), np.array([0.0, 1.0])),  # left
        3: (np.array([pos * height, width - 1.0]), np.array([0.0, -1.0])),  # right
    }[edge]
    c, s = math.cos(tilt), math.sin(tilt)
    fwd = np.array([c * inward[0] - s * inward[1], s * inward[0] + c * inward[1]])
    perp = np.array([-fwd[1], fwd[0]])

    def shape(scale: float) -> np.ndarray:
        u = unit * scale
        palm = entry + fwd * (depth * unit + 0.12 * u)
        mask = _capsule(py, px, entry - fwd * u, palm, 0.09 * u)  # forearm
        rel_y, rel_x = py - palm[0], px - palm[1]
        along, across = rel_y * fwd[0] + rel_x * fwd[1], rel_y * perp[0] + rel_x * perp[1]
        mask |= (along / (0.12 * u)) ** 2 + (across / (0.10 * u)) ** 2 <= 1.0
        for off, length, ang in zip((-0.075, -0.025, 0.025, 0.075), lengths, spread, strict=True):
            base = palm + fwd * 0.08 * u + perp * off * u
            direc = fwd * math.cos(ang) + perp * math.sin(ang)
            mask |= _capsule(py, px, base, base + direc * length * u, 0.026 * u)
        base = palm + fwd * 0.02 * u + perp * side * 0.08 * u
        direc = fwd * math.cos(thumb_angle) + perp * math.sin(thumb_angle)
        mask |= _capsule(py, px, base, base + direc * 0.12 * u, 0.03 * u)
        return mask

    lo, hi = 0.2, 4.0
    for _ in range(30):  # coverage grows with scale: bisect to the target
        mid = 0.5 * (lo + hi)
        if shape(mid).mean() < target:
            lo = mid
        else:
            hi = mid
    mask = shape(0.5 * (lo + hi))
    inside = ndimage.distance_transform_edt(mask)
    rounded = 0.7 + 0.3 * np.clip(inside / (0.03 * unit), 0.0, 1.0)
    ramp = ((py - height / 2) * math.sin(light) + (px - width / 2) * math.cos(light)) / unit
    shade = np.clip(rounded * (1.0 + 0.15 * ramp), 0.0, 1.2)
    return mask, np.clip(tone[None, None, :] * shade[..., None], 0.0, 1.0)


@dataclass(frozen=True)
class _Generated:
    key: str
    suite: str
    seed: int
    kernel_size: int
    coverage: float | None


def _frame_arrays(spec: BenchSpec, suite: str, index: int) -> tuple[dict[str, bytes], _Generated]:
    """One benchmark frame and its sidecars as encoded bytes (deterministic)."""
    seed = spec.seed_start + SUITES.index(suite) * 10_000 + index
    g = generator_for(f"bench/{suite}/{index}/{seed}")
    ksize = spec.kernel_sizes[int(torch.randint(len(spec.kernel_sizes), (1,), generator=g))]
    k = SUITE_KERNELS[suite](ksize, g)
    k = k / k.sum()
    side = spec.size + ksize - 1
    canvas = render_canvas(seed, side, side, list(spec.fonts))
    hands: list[np.ndarray] = []

    def occlude(y: np.ndarray) -> np.ndarray:  # after the blur, before the noise: the set's draw order
        hand, colour = hand_occluder(spec.size, spec.size, g, spec.occlusion)
        hands.append(hand)
        return np.where(hand[..., None], colour, y)

    y8, sharp = observe(canvas, k, spec.noise_sigma, g, method="direct",
                        occlude=occlude if suite in OCCLUDED_SUITES else None)
    mask = ~hands[0] if hands else None
    coverage = float(hands[0].mean()) if hands else None
    fid = f"{suite}/f{index:03d}"
    files = sidecar_files(fid, y8, sharp, k, mask)
    return files, _Generated(f"{fid}.png", suite, seed, ksize, coverage)


def _classic_files(spec: BenchSpec, suite: str, index: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    files, rec = _frame_arrays(spec, suite, index)
    return files, asdict(rec)


def _native_files(spec: BenchSpec, suite: str, index: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    return native_files(spec.seed_start, spec.fonts, suite, index)


def _photo_files(spec: BenchSpec, suite: str, index: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    if not spec.photos:
        raise BenchError(f"suite {suite} needs --photos DIR (a folder of real photographs)")
    kernels = {"motion": _kinds("motion"), "gaussian": _kinds("gaussian"), "near-sharp": near_sharp_kernel}
    fs = PhotoFrameSpec(spec.photos, spec.size, spec.kernel_sizes, kernels,
                        lambda h, w, g: hand_occluder(h, w, g, spec.occlusion))
    try:
        return photo_files(fs, suite, index)
    except PhotoSuiteError as exc:
        raise BenchError(str(exc)) from exc


#: suite name -> frame generator (spec, suite, index) -> (files, manifest record). The whole list.
SUITE_FRAMES: dict[str, Callable[[BenchSpec, str, int], tuple[dict[str, bytes], dict[str, Any]]]] = {
    "motion": _classic_files,
    "gaussian": _classic_files,
    "motion+occlusion": _classic_files,
    "near-sharp": _classic_files,
    "native-motion": _native_files,
    "native-gaussian": _native_files,
} | dict.fromkeys(PHOTO_SUITES, _photo_files)


def generate_set(
    store: ObjectStore, spec: BenchSpec, progress: bool = True
) -> list[dict[str, Any]]:
    """Write the benchmark set into ``store`` (sidecar layout + ``bench.json``); frame records.

    An existing set with the same spec is reused as is, and extended by the suites it lacks
    (frames are deterministic per suite and index, so the added suites are what a fresh set
    would hold); any other difference in ``bench.json`` is an error (never overwrite another set:
    pick another folder).
    """
    spec.validate()
    want = json.loads(json.dumps(spec.to_json()))  # tuples -> lists, as read back
    records: list[dict[str, Any]] = []
    have_suites: list[str] = []
    if store.exists(MANIFEST):
        have = json.loads(store.get(MANIFEST))
        same = {k: v for k, v in have.get("spec", {}).items() if k != "suites"}
        if same != {k: v for k, v in want.items() if k != "suites"}:
            raise BenchError(
                f"{store.uri} holds a benchmark set with a different spec; use another --set folder"
            )
        have_suites = list(have["spec"]["suites"])
        records = list(have["frames"])
        if set(spec.suites) <= set(have_suites):
            return records
        want["suites"] = have_suites + [s for s in spec.suites if s not in have_suites]
    from tqdm import tqdm

    jobs = [(s, i) for s in spec.suites if s not in have_suites for i in range(spec.frames_per_suite)]
    for suite, i in tqdm(jobs, desc="generate bench set", disable=not progress):
        files, rec = SUITE_FRAMES[suite](spec, suite, i)
        for key, data in files.items():
            store.put(key, data)
        records.append(rec)
    manifest = {"spec": want, "frames": records}
    store.put(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return records
