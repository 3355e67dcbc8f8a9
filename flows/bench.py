"""`checkout-restore bench`: a deterministic benchmark set, every method on the same frames, a table.

    checkout-restore bench                                   # default set, all methods
    checkout-restore bench --methods blurred,classical-blind,oracle-wiener --out runs/bench/cls
    checkout-restore bench --data s3://bucket/calibration --limit 20 --methods blind-cvsa
    python -m flows.bench --generate-only --set runs/bench/set

Benchmark set (generated under ``--set`` unless ``--data`` is given; same bytes on every run):
held-out product renders (seeds from ``HELDOUT_SEED_START + 100_000``, never trained on), each a
canvas of (size + K - 1)² blurred by the *valid* true convolution of :mod:`restoration.operators`
(so the frame's borders drew on pixels outside it, as in a camera), plus Gaussian noise of std
0.02 on [0, 1], 8-bit quantised. K is drawn among the odd sizes 15..31. Suites:

- ``motion``: random camera/hand motion-trajectory kernels;
- ``gaussian``: anisotropic Gaussian kernels;
- ``motion+occlusion``: motion kernels plus a hand-like occluder (a skin-coloured forearm, palm,
  fingers and thumb entering from a frame edge, 10-25 % of the frame): the frame shows the hand,
  the mask sidecar is 0 there, and the sharp truth is the product behind it.

Frames are written in the sidecar layout of docs/design.md §4 (``<suite>/fNNN.png``, ``.mask.png``,
``.sharp.png``, ``.kernel.npy``), with ``bench.json`` (the generation spec) at the root, so any
folder in that layout can be benchmarked with ``--data``.

Methods (a literal table, :data:`METHODS`): ``blurred`` (the input), ``classical-blind``
(Pan et al. 2014 L0 blind deconvolution, :mod:`restoration.classical`), ``oracle-wiener``
(Wiener with the true kernel: a reference, not a rival), ``oracle-cvsa`` (non-blind proximal
CVSA with the true kernel and the shipped image prior: the ceiling for blind CVSA),
``blind-cvsa`` (the product: :class:`restoration.service.FrameRestorer` with the pipeline config's
restoration settings and both shipped priors). Every method returns 8-bit images (what a user
saves), scored against the truth: PSNR / SSIM on [0, 1] RGB (scikit-image conventions), PSNR
inside / outside the occlusion mask, kernel-MSE and kernel NCC as docs/design.md §7 defines them on a
common canvas of max(kernel_size setting, true K) px, seconds per frame, network evaluations.
``fixed-kernel`` rows hold the best *fixed* kernel guess per suite: the single Gaussian sigma or
disc radius that minimises the suite's mean kernel-MSE, chosen with hindsight.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from flows.bench_native import ALIASES, CODES_SUFFIX, native_files
from flows.config import load_config
from flows.fonts import DEFAULT_FONT_GLOB, find_fonts
from restoration import kernels as kern
from restoration.classical import classical_blind, wiener_deconv
from restoration.codes import decode_codes
from restoration.metrics import (
    kernel_mse,
    kernel_ncc,
    psnr,
    psnr_masked,
    registration_shift,
    sharpness_gain,
    ssim,
)
from restoration.operators import blur
from restoration.rng import generator_for
from restoration.settings import RestorationSettings, model_noise_sigma
from restoration.synthetic import HELDOUT_SEED_START, render_canvas
from storage.base import ObjectStore
from storage.frames import load_frame
from storage.images import encode_png
from storage.sidecars import discover, save_kernel
from storage.stores import open_store

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
#: a frame is "harmed" when the output's PSNR is below the input's by more than this (dB)
HARM_MARGIN_DB = 0.3
METHOD_NAMES: tuple[str, ...] = (
    "blurred",
    "classical-blind",
    "oracle-wiener",
    "oracle-cvsa",
    "blind-cvsa",
)
MANIFEST = "bench.json"
BENCH_SEED_START = HELDOUT_SEED_START + 100_000
#: Columns every results table has (plus psnr_in_mask / psnr_out_mask, NaN without a mask).
COLUMNS: tuple[str, ...] = (
    "method", "frame", "suite", "psnr", "ssim", "psnr_in_mask", "psnr_out_mask", "kernel_mse",
    "kernel_ncc", "seconds", "nfe", "sharpness_gain", "kernel_size_true", "kernel_size_est",
    "note", "codes_true", "codes_decoded", "codes_sharp", "codes_read",
    "psnr_input", "harmed", "shift_px", "kernel_choice", "kernel_score",
)  # fmt: skip

_SKIN = ((236, 188, 160), (224, 172, 135), (198, 134, 96), (160, 105, 72), (120, 80, 56),
         (250, 214, 185))  # fmt: skip


class BenchError(RuntimeError):
    """A benchmark could not run as asked (bad arguments, missing truth, missing method)."""


# ----------------------------------------------------------------------------- the set


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
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].double() / 255.0
    y = blur(x, k, method="direct")[0].permute(1, 2, 0).numpy()  # (size, size, 3) on [0, 1]
    c = (ksize - 1) // 2
    sharp = canvas[c : c + spec.size, c : c + spec.size]
    mask = None
    coverage = None
    if suite in OCCLUDED_SUITES:
        hand, colour = hand_occluder(spec.size, spec.size, g, spec.occlusion)
        y = np.where(hand[..., None], colour, y)
        mask = ~hand
        coverage = float(hand.mean())
    noise = torch.randn(y.shape, generator=g, dtype=torch.float64).numpy() * spec.noise_sigma
    y8 = np.clip(np.rint((y + noise) * 255.0), 0, 255).astype(np.uint8)
    fid = f"{suite}/f{index:03d}"
    files = {
        f"{fid}.png": encode_png(y8),
        f"{fid}.sharp.png": encode_png(np.ascontiguousarray(sharp)),
        f"{fid}.kernel.npy": save_kernel(k[0, 0].numpy()),
    }
    if mask is not None:
        files[f"{fid}.mask.png"] = encode_png(mask)
    return files, _Generated(f"{fid}.png", suite, seed, ksize, coverage)


def _classic_files(spec: BenchSpec, suite: str, index: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    files, rec = _frame_arrays(spec, suite, index)
    return files, asdict(rec)


def _native_files(spec: BenchSpec, suite: str, index: int) -> tuple[dict[str, bytes], dict[str, Any]]:
    return native_files(spec.seed_start, spec.fonts, suite, index)


#: suite name -> frame generator (spec, suite, index) -> (files, manifest record). The whole list.
SUITE_FRAMES: dict[str, Callable[[BenchSpec, str, int], tuple[dict[str, bytes], dict[str, Any]]]] = {
    "motion": _classic_files,
    "gaussian": _classic_files,
    "motion+occlusion": _classic_files,
    "near-sharp": _classic_files,
    "native-motion": _native_files,
    "native-gaussian": _native_files,
}


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


# ----------------------------------------------------------------------------- frames & methods


@dataclass(frozen=True, eq=False)
class BenchFrame:
    """A frame with its truth: tensors on [0, 1], batch dimension 1."""

    id: str
    suite: str
    image: np.ndarray  # (H, W, 3) uint8, the frame as stored
    y: torch.Tensor  # (1, 3, H, W) float32 on [0, 1]
    mask: torch.Tensor | None  # (1, 1, H, W) 1 = observed
    sharp: torch.Tensor | None  # (1, 3, H, W) on [0, 1]
    kernel: torch.Tensor | None  # (1, 1, K, K) float32, sums to 1
    codes: tuple[str, ...] | None = None  # true code texts (<id>.codes.json), None: not a code frame
    codes_sharp: tuple[str, ...] = ()  # those of them zxing-cpp reads in the sharp truth


@dataclass(frozen=True, eq=False)
class MethodOutput:
    """What a method returns for a batch: images on [0, 1], kernels (or None), network evals."""

    x: torch.Tensor  # (B, 3, H, W)
    kernel: torch.Tensor | None  # (B, 1, K, K)
    nfe: int
    #: per frame: the kernel candidate the method chose and its no-reference score (or empty)
    choices: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class BenchContext:
    """Settings shared by the methods; priors are loaded on first use only."""

    settings: RestorationSettings
    device: str = "cpu"
    _priors: tuple[Any, Any] | None = field(default=None, repr=False)

    def sigma(self, frames: list[BenchFrame]) -> torch.Tensor:
        """Noise std per frame on the [-1, 1] scale (B,): the setting (given on [0, 1]), or each
        frame's own estimate when it is 'auto' -- the same rule as the pipeline's restorer."""
        from restoration.noise import estimate_noise_sigma
        from restoration.service import QUANTISATION_SIGMA

        if self.settings.noise_sigma == "auto":
            return estimate_noise_sigma(_cat(frames, "y") * 2 - 1, _masks(frames), QUANTISATION_SIGMA)
        return torch.full((len(frames),), model_noise_sigma(self.settings.noise_sigma), dtype=torch.float64)

    def priors(self) -> tuple[Any, Any]:
        if self._priors is None:
            try:
                from restoration.priors import load_shipped
            except ImportError as exc:
                raise BenchError(f"CVSA methods need restoration.priors.load_shipped: {exc}") from exc
            self._priors = (load_shipped("image", self.device), load_shipped("kernel", self.device))
        return self._priors


MethodFn = Callable[[list[BenchFrame], BenchContext], MethodOutput]


def _cat(frames: list[BenchFrame], attr: str) -> torch.Tensor:
    return torch.cat([getattr(f, attr) for f in frames])


def _masks(frames: list[BenchFrame]) -> torch.Tensor | None:
    if all(f.mask is None for f in frames):
        return None
    return torch.cat([torch.ones_like(f.y[:, :1]) if f.mask is None else f.mask for f in frames])


def _one(sigma: torch.Tensor) -> float:
    if sigma.numel() != 1:
        raise BenchError("this method runs one frame at a time (one noise level)")
    return float(sigma[0])


def _true_kernel(frames: list[BenchFrame], method: str) -> torch.Tensor:
    if len(frames) != 1:
        raise BenchError(f"{method} runs one frame at a time (kernel sizes differ)")
    if frames[0].kernel is None:
        raise BenchError(f"{method} needs the true kernel: {frames[0].id}.kernel.npy is missing")
    return frames[0].kernel


def method_blurred(frames: list[BenchFrame], ctx: BenchContext) -> MethodOutput:
    """The input itself (what the camera gave)."""
    return MethodOutput(x=_cat(frames, "y"), kernel=None, nfe=0)


def method_classical_blind(frames: list[BenchFrame], ctx: BenchContext) -> MethodOutput:
    """Pan et al. 2014 L0 blind deconvolution with the setting's kernel size (no learned prior)."""
    y = _cat(frames, "y") * 2 - 1
    x, k = classical_blind(y, _masks(frames), ctx.settings.kernel_size, _one(ctx.sigma(frames)))
    return MethodOutput(x=(x + 1) / 2, kernel=k, nfe=0)


def method_oracle_wiener(frames: list[BenchFrame], ctx: BenchContext) -> MethodOutput:
    """Wiener deconvolution with the TRUE kernel (a reference, not a rival)."""
    k = _true_kernel(frames, "oracle-wiener")
    x = wiener_deconv(_cat(frames, "y") * 2 - 1, k, _masks(frames), _one(ctx.sigma(frames)))
    return MethodOutput(x=(x + 1) / 2, kernel=None, nfe=0)


def method_oracle_cvsa(frames: list[BenchFrame], ctx: BenchContext) -> MethodOutput:
    """Non-blind (proximal) CVSA with the TRUE kernel and the shipped image prior."""
    from restoration.cvsa import restore_blind
    from restoration.service import autocast_score
    from restoration.tiling import tiled_score

    k = _true_kernel(frames, "oracle-cvsa")
    image_prior, kernel_prior = ctx.priors()
    s = ctx.settings
    y = _cat(frames, "y") * 2 - 1
    with torch.no_grad():
        result = restore_blind(
            y, _masks(frames),
            tiled_score(autocast_score(image_prior, s.bf16), s.tile_size, s.tile_overlap, s.tile_batch),
            autocast_score(kernel_prior, s.bf16),
            image_cld=image_prior.cld, kernel_cld=kernel_prior.cld, kernel_size=k.shape[-1],
            steps=s.steps, noise_sigma=ctx.sigma(frames),
            generator=[generator_for(f"bench/{f.id}") for f in frames],
            method="proximal", known_kernel=k, image_guidance=s.image_guidance,
            prox_strength=s.prox_strength, renoise=s.renoise,
        )  # fmt: skip
    return MethodOutput(x=(result.x.float() + 1) / 2, kernel=None, nfe=int(result.nfe))


def method_blind_cvsa(frames: list[BenchFrame], ctx: BenchContext) -> MethodOutput:
    """The product: blind CVSA through the pipeline's FrameRestorer with its default settings."""
    try:
        from restoration.service import FrameInput, FrameRestorer
    except ImportError as exc:
        raise BenchError(f"blind-cvsa needs restoration.service.FrameRestorer: {exc}") from exc
    restorer = FrameRestorer(ctx.settings, device=ctx.device, priors=ctx.priors())
    inputs = [
        FrameInput(
            key=f.id,
            image=f.image,
            mask=None if f.mask is None else f.mask[0, 0].numpy() > 0.5,
            seed_key=f"bench/{f.id}",
        )
        for f in frames
    ]
    with torch.no_grad():
        outs = restorer(inputs)
    x = torch.stack([torch.from_numpy(o.restored).permute(2, 0, 1).float() / 255.0 for o in outs])
    sizes = {o.kernel.shape for o in outs}
    kernel = (
        torch.stack([torch.from_numpy(np.asarray(o.kernel, np.float32))[None] for o in outs])
        if len(sizes) == 1
        else None
    )
    return MethodOutput(x=x, kernel=kernel, nfe=int(outs[0].nfe) if outs else 0,
                        choices=[(o.kernel_choice, o.kernel_score) for o in outs])


#: name -> function(frames, context) -> MethodOutput. The whole registry: no discovery.
METHODS: dict[str, MethodFn] = {
    "blurred": method_blurred,
    "classical-blind": method_classical_blind,
    "oracle-wiener": method_oracle_wiener,
    "oracle-cvsa": method_oracle_cvsa,
    "blind-cvsa": method_blind_cvsa,
}


# ----------------------------------------------------------------------------- running


def _suite_of(frame_id: str) -> str:
    return frame_id.rsplit("/", 1)[0] if "/" in frame_id else "all"


def _to_unit(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0


def load_frames(
    store: ObjectStore, limit: int | None = None, suites: Sequence[str] | None = None
) -> list[BenchFrame]:
    """Frames of a sidecar-layout store sorted by id (the first ``limit`` of them), optionally only
    those of ``suites``."""
    refs = sorted(discover(store), key=lambda r: r.id)
    if suites is not None:
        refs = [r for r in refs if _suite_of(r.id) in suites]
    if limit is not None:
        refs = refs[:limit]
    frames = []
    for ref in refs:
        data = load_frame(store, ref)
        codes = _true_codes(store, ref.id)
        codes_sharp = () if codes is None or data.sharp is None else _read(data.sharp, codes)
        frames.append(
            BenchFrame(
                id=ref.id,
                suite=_suite_of(ref.id),
                image=data.image,
                y=_to_unit(data.image),
                mask=None
                if data.mask is None
                else torch.from_numpy(data.mask.astype(np.float32))[None, None],
                sharp=None if data.sharp is None else _to_unit(data.sharp),
                kernel=None
                if data.kernel is None
                else torch.from_numpy(np.asarray(data.kernel, np.float32))[None, None],
                codes=codes,
                codes_sharp=codes_sharp,
            )
        )
    return frames


def _true_codes(store: ObjectStore, frame_id: str) -> tuple[str, ...] | None:
    key = f"{frame_id}{CODES_SUFFIX}"
    if not store.exists(key):
        return None
    try:
        codes = json.loads(store.get(key))["codes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{key} is not a codes sidecar ({{'codes': [texts]}}): {exc}") from exc
    return tuple(str(c) for c in codes)


def _read(image: np.ndarray, truth: tuple[str, ...]) -> tuple[str, ...]:
    """The true code texts zxing-cpp reads back from an 8-bit frame (a wrong text does not count)."""
    found = set(decode_codes(image))
    return tuple(c for c in truth if c in found)


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """Outputs are scored as saved: 8-bit."""
    return (x.float().clamp(0, 1) * 255).round() / 255


def _nan() -> float:
    return float("nan")


def score(
    frame: BenchFrame, x: torch.Tensor, k: torch.Tensor | None, kernel_canvas: int
) -> dict[str, float]:
    """Truth-based and no-reference numbers of one restored frame (NaN where no truth)."""
    row: dict[str, float] = dict.fromkeys(
        ("psnr", "ssim", "psnr_in_mask", "psnr_out_mask", "kernel_mse", "kernel_ncc"), _nan()
    )
    x = x[None] if x.dim() == 3 else x
    if frame.sharp is not None:
        row["psnr"] = float(psnr(x, frame.sharp)[0])
        row["ssim"] = float(ssim(x, frame.sharp)[0])
        if frame.mask is not None:
            row["psnr_in_mask"] = float(psnr_masked(x, frame.sharp, 1 - frame.mask)[0])
            row["psnr_out_mask"] = float(psnr_masked(x, frame.sharp, frame.mask)[0])
    if k is not None and frame.kernel is not None:
        canvas = max(kernel_canvas, frame.kernel.shape[-1], k.shape[-1])
        canvas += 1 - canvas % 2
        row["kernel_mse"] = float(kernel_mse(k, frame.kernel, canvas=canvas)[0])
        row["kernel_ncc"] = float(kernel_ncc(k, frame.kernel, canvas=canvas)[0])
    row["sharpness_gain"] = float(sharpness_gain(x, frame.y, frame.mask)[0])
    row.update(psnr_input=_nan(), harmed=_nan(), shift_px=_nan())
    if frame.sharp is not None:
        # harm is judged where the frame was observed: under a hand the input holds the hand
        if frame.mask is None:
            before, after = float(psnr(frame.y, frame.sharp)[0]), row["psnr"]
        else:
            before = float(psnr_masked(frame.y, frame.sharp, frame.mask)[0])
            after = row["psnr_out_mask"]
        row["psnr_input"] = before
        row["harmed"] = float(after < before - HARM_MARGIN_DB)
        row["shift_px"] = float(registration_shift(x, frame.sharp)[0].norm())
    return row


def run_method(
    name: str, frames: list[BenchFrame], ctx: BenchContext, progress: bool = True
) -> list[dict[str, Any]]:
    """One row per frame for method ``name`` (frames restored one at a time, timed)."""
    from tqdm import tqdm

    if name not in METHODS:
        raise BenchError(f"unknown method {name!r}; choose from {list(METHODS)}")
    fn = METHODS[name]
    rows = []
    for frame in tqdm(frames, desc=name, disable=not progress, leave=True):
        started = time.perf_counter()
        out = fn([frame], ctx)
        seconds = time.perf_counter() - started
        x = _quantise(out.x)
        if x.shape[-2:] != frame.y.shape[-2:]:
            raise BenchError(f"{name} returned {tuple(x.shape[-2:])} for {frame.id}, "
                             f"not the input size {tuple(frame.y.shape[-2:])}")
        row = {"method": name, "frame": frame.id, "suite": frame.suite}
        row.update(score(frame, x, out.kernel, ctx.settings.kernel_size))
        choice, choice_score = out.choices[0] if out.choices else ("", _nan())
        row.update(
            seconds=seconds,
            nfe=int(out.nfe),
            kernel_size_true=_nan() if frame.kernel is None else frame.kernel.shape[-1],
            kernel_size_est=_nan() if out.kernel is None else out.kernel.shape[-1],
            note="",
            kernel_choice=choice,
            kernel_score=choice_score,
        )
        row.update(_code_columns(frame, x))
        rows.append(row)
    return rows


def _code_columns(frame: BenchFrame, x: torch.Tensor) -> dict[str, Any]:
    """codes_true / codes_decoded / codes_sharp counts and the texts read ("" / NaN without codes)."""
    if frame.codes is None:
        return {"codes_true": _nan(), "codes_decoded": _nan(), "codes_sharp": _nan(), "codes_read": ""}
    img = (x[0] if x.dim() == 4 else x).mul(255).round().byte().permute(1, 2, 0).numpy()
    read = _read(img, frame.codes)
    return {"codes_true": float(len(frame.codes)), "codes_decoded": float(len(read)),
            "codes_sharp": float(len(frame.codes_sharp)), "codes_read": ";".join(read)}


def _candidate_kernels(size: int) -> list[tuple[str, torch.Tensor]]:
    cands = []
    for sigma in np.arange(0.5, 8.01, 0.25):
        cands.append((f"gaussian sigma={sigma:.2f}", kern.gaussian_kernel(size, sigma, sigma)))
    for radius in np.arange(1.0, (size - 1) / 2 + 1e-9, 0.5):
        cands.append((f"disc radius={radius:.1f}", kern.defocus_kernel(size, float(radius))))
    return cands


def fixed_kernel_rows(frames: list[BenchFrame], kernel_canvas: int) -> list[dict[str, Any]]:
    """Per suite, the best FIXED kernel guess chosen with hindsight (min mean kernel-MSE)."""
    rows = []
    suites = sorted({f.suite for f in frames if f.kernel is not None})
    for suite in suites:
        members = [f for f in frames if f.suite == suite and f.kernel is not None]
        canvas = max([kernel_canvas] + [f.kernel.shape[-1] for f in members])
        canvas += 1 - canvas % 2
        best = None
        for label, cand in _candidate_kernels(canvas):
            c = cand[None, None]
            mse = [float(kernel_mse(c, f.kernel, canvas=canvas)[0]) for f in members]
            if best is None or np.mean(mse) < best[0]:
                best = (float(np.mean(mse)), label, c, mse)
        assert best is not None
        _, label, c, mses = best
        for f, mse in zip(members, mses, strict=True):
            row = {"method": "fixed-kernel", "frame": f.id, "suite": suite}
            row.update(dict.fromkeys(("psnr", "ssim", "psnr_in_mask", "psnr_out_mask"), _nan()))
            row.update(
                kernel_mse=mse,
                kernel_ncc=float(kernel_ncc(c, f.kernel, canvas=canvas)[0]),
                sharpness_gain=_nan(),
                seconds=0.0,
                nfe=0,
                kernel_size_true=f.kernel.shape[-1],
                kernel_size_est=canvas,
                note=f"hindsight: {label}",
                psnr_input=_nan(),
                harmed=_nan(),
                shift_px=_nan(),
                kernel_choice="",
                kernel_score=_nan(),
            )
            rows.append(row)
    return rows


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean per (suite, method), methods in registry order, fixed-kernel last."""
    order = {m: i for i, m in enumerate((*METHOD_NAMES, "fixed-kernel"))}
    cols = ["psnr", "ssim", "psnr_in_mask", "psnr_out_mask", "kernel_mse", "kernel_ncc",
            "seconds", "nfe", "shift_px"]  # fmt: skip
    g = df.groupby(["suite", "method"], sort=False)
    table = g[cols].mean()
    table.insert(0, "frames", g.size())
    table["frames_harmed"] = g["harmed"].sum(min_count=1)
    table = table.reset_index()
    # blind-vs-oracle gap: the oracle-cvsa PSNR of the suite minus the method's
    oracle = table[table["method"] == "oracle-cvsa"].set_index("suite")["psnr"]
    table["oracle_gap"] = [
        oracle.get(su, math.nan) - p if not m.startswith("oracle") else math.nan
        for su, m, p in zip(table["suite"], table["method"], table["psnr"], strict=True)
    ]
    table["_o"] = table["method"].map(lambda m: order.get(m, len(order)))
    table = table.sort_values(["suite", "_o"]).drop(columns="_o").reset_index(drop=True)
    notes = df[df["method"] == "fixed-kernel"].groupby("suite")["note"].first()
    table["note"] = [notes.get(s, "") if m == "fixed-kernel" else "" for s, m in
                     zip(table["suite"], table["method"], strict=True)]
    return table.merge(code_table(df), on=["suite", "method"], how="left")


def code_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (suite, method) over frames with true codes: codes_true, codes_decoded, codes_sharp (sums)
    and codes_lost, the frames where a code the blurred input reads is not read in the output."""
    cols = ["suite", "method", "codes_true", "codes_decoded", "codes_sharp", "codes_lost"]
    if "codes_true" not in df.columns:
        return pd.DataFrame(columns=cols)
    coded = df[df["codes_true"].notna()]
    if coded.empty:
        return pd.DataFrame(columns=cols)
    blurred = coded[coded["method"] == "blurred"].set_index("frame")["codes_read"]

    def lost(r: pd.Series) -> float:
        if r["frame"] not in blurred.index:
            return float("nan")
        before = {c for c in str(blurred[r["frame"]]).split(";") if c}
        after = {c for c in str(r["codes_read"]).split(";") if c}
        return float(bool(before - after))

    coded = coded.assign(codes_lost=coded.apply(lost, axis=1))
    sums = coded.groupby(["suite", "method"], sort=False)[cols[2:]].sum(min_count=1)
    return sums.reset_index()


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if isinstance(v, float | np.floating):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(table: pd.DataFrame, header: str) -> str:
    """The summary as a markdown table (kernel-MSE shown ×1e4)."""
    lines = [
        header,
        "",
        "| suite | method | frames | PSNR | SSIM | PSNR in mask | PSNR out mask "
        "| kernel-MSE ×1e4 | kernel NCC | frames harmed | gap to oracle-cvsa dB | |shift| px "
        "| s/frame | NFE | codes read | sharp reads | codes lost | note |",
        "|---|---|" + "---:|" * 15 + "---|",
    ]
    for r in table.itertuples(index=False):
        harmed = "–" if math.isnan(r.frames_harmed) else str(int(r.frames_harmed))
        cells = [
            r.suite, r.method, str(r.frames), _fmt(r.psnr, 2), _fmt(r.ssim, 3),
            _fmt(r.psnr_in_mask, 2), _fmt(r.psnr_out_mask, 2), _fmt(r.kernel_mse * 1e4, 3),
            _fmt(r.kernel_ncc, 3), harmed, _fmt(r.oracle_gap, 2), _fmt(r.shift_px, 2),
            _fmt(r.seconds, 2), _fmt(float(r.nfe), 0),
            _rate(r.codes_decoded, r.codes_true), _rate(r.codes_sharp, r.codes_true),
            _fmt(r.codes_lost, 0), r.note,
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _rate(n: Any, total: Any) -> str:
    """'read/true (percent)' or '–' where the suite has no codes."""
    if not isinstance(total, int | float) or math.isnan(total) or total <= 0:
        return "–"
    return f"{int(n)}/{int(total)} ({100 * n / total:.0f} %)"


def _header(args: argparse.Namespace, data_uri: str, n: int, wall: float) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    return "\n".join([
        "# Benchmark results",
        "",
        f"- command: `checkout-restore {' '.join(args.argv)}`",
        f"- data: `{data_uri}` ({n} frames); date: {now}; wall time: {wall:.0f} s",
        f"- machine: {platform.system()} {cpu}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}",
        "- PSNR/SSIM on [0, 1] RGB (scikit-image conventions) of the 8-bit outputs; PSNR in/out"
        " mask: occluded / observed pixels.",
        "- kernel-MSE: both kernels sum to 1, centred on a common odd canvas of max(setting,"
        " true K) px, estimate aligned by the best integer shift within ±3 px; kernel NCC: max"
        " over the same shifts. fixed-kernel: the single Gaussian σ or disc radius with the"
        " lowest mean kernel-MSE on the suite, chosen with hindsight.",
        "- oracle-* methods use the TRUE kernel (references, not rivals).",
        "- codes read: true code texts zxing-cpp reads back / codes on the frames (suites with"
        " `<id>.codes.json`); sharp reads: the same on the sharp truth; codes lost: frames where a"
        " code read in the blurred input is not read in the output.",
    ])  # fmt: skip


# ----------------------------------------------------------------------------- CLI


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="benchmark this folder/URI (sidecar layout) instead of the set")
    p.add_argument("--set", dest="set_dir", default="runs/bench/set",
                   help="where the default set is generated (reused if its spec matches)")
    p.add_argument("--methods", default=",".join(METHOD_NAMES),
                   help=f"comma-separated, from {','.join(METHOD_NAMES)}")
    p.add_argument("--limit", type=int, help="only the first N frames sorted by name")
    p.add_argument("--out", default="runs/bench/results", help="folder/URI for results.*")
    p.add_argument("--config", default="default", help="pipeline config (restoration settings)")
    p.add_argument("--steps", type=int, help="override the CVSA sampler steps")
    p.add_argument("--frames-per-suite", type=int, default=BenchSpec.frames_per_suite,
                   help="frames per suite")
    p.add_argument("--size", type=int, default=BenchSpec.size, help="side of the square frames")
    p.add_argument("--suites", default=",".join(SUITES),
                   help="comma-separated suites (motion, gaussian, motion+occlusion, native = native-motion,"
                   "native-gaussian: flows/bench_native.py), or table1 / table1:TASK,... (flows/table1.py)")
    p.add_argument("--fonts", default=DEFAULT_FONT_GLOB, help="glob of TrueType fonts")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--generate-only", action="store_true", help="write the set and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `checkout-restore bench` on the CLI dispatcher."""
    p = subparsers.add_parser("bench", help="benchmark restoration methods on a deterministic set",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(p)
    p.set_defaults(func=bench_main)
    return p


def _spec_from_args(args: argparse.Namespace) -> BenchSpec:

    fonts = tuple(find_fonts(args.fonts))
    names = (s.strip() for s in args.suites.split(",") if s.strip())
    suites = tuple(dict.fromkeys(x for n in names for x in ALIASES.get(n, (n,))))
    return BenchSpec(suites=suites, frames_per_suite=args.frames_per_suite, size=args.size,
                     fonts=fonts)


def bench_main(args: argparse.Namespace) -> int:
    """Generate (or take) the frames, run the methods, write results.parquet / results.md."""
    if not hasattr(args, "argv"):  # called through flows.cli: record the command as typed
        args.argv = sys.argv[1:]
    from flows.table1 import parse_tasks, run_table1  # the non-blind suite (its own module)

    if (tasks := parse_tasks(args.suites)) is not None:
        return run_table1(args, tasks)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise BenchError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if args.limit is not None and args.limit < 1:
        raise BenchError("--limit must be >= 1")
    progress = not args.no_progress
    if args.data:
        data_uri = args.data
        store = open_store(args.data, read_only=True)
    else:
        data_uri = args.set_dir
        if "://" not in args.set_dir:
            Path(args.set_dir).mkdir(parents=True, exist_ok=True)
        store = open_store(args.set_dir)
        generate_set(store, _spec_from_args(args), progress=progress)
        if args.generate_only:
            print(f"benchmark set in {store.uri}")
            return 0
    settings = load_config(args.config).restoration
    if args.steps:
        settings = settings.model_copy(update={"steps": args.steps})
    frames = load_frames(store, args.limit, None if args.data else _spec_from_args(args).suites)
    if not frames:
        raise BenchError(f"no frames under {data_uri}")
    ctx = BenchContext(settings=settings, device=args.device)
    rows: list[dict[str, Any]] = []
    for name in methods:
        rows.extend(run_method(name, frames, ctx, progress=progress))
    rows.extend(fixed_kernel_rows(frames, settings.kernel_size))
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    table = summary_table(df)
    wall = time.perf_counter() - started
    text = markdown(table, _header(args, data_uri, len(frames), wall))
    if "://" not in args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    out = open_store(args.out)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    out.put("results.parquet", buf.getvalue())
    out.put("results.md", text.encode())
    print(text)
    print(f"wrote {out.uri.rstrip('/')}/results.parquet and results.md ({wall:.0f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m flows.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = ["bench", *argv]
    try:
        return bench_main(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
