"""The restoring service: frames in, restored frames out, the unit of work a Ray actor runs (one
vectorised batch; also what the bench's blind-cvsa method calls).

Frames of any size and aspect are restored at their own resolution: the output keeps the input's
pixels and detail (nothing is downscaled and scaled back). Per frame:

1. noise level: `noise_sigma: auto` estimates it from the frame (restoration/noise.py), a number
   overrides it;
2. kernel: estimated at native pixel scale (`kernel_size` native px) on the `working_size` square
   region of the frame with the most observed gradient energy (a blur that is uniform over the
   frame is identified by any textured part of it; the cost stays bounded for large frames);
3. image: blind CVSA over the whole canvas (FFT data consistency, valid convolution), the image
   score network run over overlapping tiles (restoration/tiling.py) so memory is bounded by
   the tile size, not the frame.

Frames that share a shape are restored as one vectorised batch (one seeded generator per frame),
so a frame's result does not depend on its batch mates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from restoration.cvsa import ScorePrior, restore_blind
from restoration.device import to_device, use_bf16
from restoration.guard import GuardVerdict, guard_stats, judge
from restoration.kernel_choice import KERNEL_STRATEGIES, USES_KERNEL_PRIOR, KernelPlan
from restoration.kernels import kernel_extent
from restoration.metrics import sharpness_gain
from restoration.noise import QUANTISATION_SIGMA, estimate_noise_sigma
from restoration.physics import BlurMask
from restoration.priors import Prior, load_shipped
from restoration.rng import generator_for
from restoration.settings import RestorationSettings, model_noise_sigma
from restoration.tiling import tiled_score


@dataclass(frozen=True)
class FrameInput:
    key: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) bool, True = observed
    seed_key: str  # stable string -> torch.Generator (object key + config hash)


@dataclass(frozen=True)
class FrameOutput:
    key: str
    restored: np.ndarray  # (H, W, 3) uint8, same size and resolution as the input
    kernel: np.ndarray  # (K, K) float32, sums to 1, native pixels
    residual: float  # RMS data-fit residual / noise sigma on observed pixels (~1 = fits to the noise)
    sharpness_gain: float
    kernel_extent: float
    nfe: int
    seconds: float
    noise_sigma: float  # noise std used, on the [0, 1] scale (estimated when the setting is 'auto')
    kernel_choice: str = ""  # the kernel candidate used (restoration/kernel_choice.py)
    kernel_score: float = float("nan")  # its no-reference score (Whittle nll; lower fits better)
    #: why the guard shipped the input instead of the restoration ("" = it did not; restoration/guard.py)
    fallback: str = ""
    guard: dict[str, float] | None = None  # the guard's statistics (None: guard off)
    rejected: np.ndarray | None = None  # the restoration the guard rejected (None: none was)




def autocast_score(
    prior: Prior, enabled: bool, channels_last: bool = False
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The prior's score, optionally under bfloat16 autocast (1.6x less CPU per pixel than float32,
    measured) and in channels-last memory layout (another 1.4x: 6.8 -> 4.8 us/px of CPU on 128-256 px
    tiles, same arithmetic), returned in float32 and the default layout. channels_last converts the
    prior's network in place (its weights' layout only)."""
    if channels_last:
        prior.net.to(memory_format=torch.channels_last)
    if not enabled and not channels_last:
        return prior.score

    def score(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if channels_last:
            fmt = torch.channels_last
            x, v = x.contiguous(memory_format=fmt), v.contiguous(memory_format=fmt)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=enabled):
            return prior.score(x, v, t).to(x.dtype).contiguous()

    return score


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    # copy: arrays from PIL are read-only
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).numpy()


def kernel_region(y: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[slice, slice]:
    """The `size` x `size` window (clipped to the frame) of one frame y (C, H, W) with the largest
    gradient energy on observed pixels, mask (1, H, W): where edges pin the kernel down. Windows
    are scored on a grid of stride size/8 (integral image); ties go to the first (top-left)."""
    _, h, w = y.shape
    wh, ww = min(size, h), min(size, w)
    if (wh, ww) == (h, w):
        return slice(0, h), slice(0, w)
    gray = y.double().mean(dim=0)
    m = mask[0].double()
    energy = torch.zeros(h, w, dtype=torch.float64)
    gx = (gray[:, 1:] - gray[:, :-1]).abs() * m[:, 1:] * m[:, :-1]
    gy = (gray[1:, :] - gray[:-1, :]).abs() * m[1:, :] * m[:-1, :]
    energy[:, 1:] += gx
    energy[1:, :] += gy
    integral = torch.nn.functional.pad(energy.cumsum(0).cumsum(1), (1, 0, 1, 0))
    stride = max(1, size // 8)
    rows = sorted(set(range(0, h - wh + 1, stride)) | {h - wh})
    cols = sorted(set(range(0, w - ww + 1, stride)) | {w - ww})
    r = torch.tensor(rows)[:, None]
    c = torch.tensor(cols)[None, :]
    total = integral[r + wh, c + ww] - integral[r, c + ww] - integral[r + wh, c] + integral[r, c]
    best = int(torch.argmax(total.flatten()))
    r0, c0 = rows[best // len(cols)], cols[best % len(cols)]
    return slice(r0, r0 + wh), slice(c0, c0 + ww)


class FrameRestorer:
    """Loads both priors once; `__call__` restores a list of frames as one batch."""

    def __init__(
        self,
        settings: RestorationSettings,
        device: str = "cpu",
        priors: tuple[Prior, Prior] | None = None,
    ) -> None:
        if settings.kernel_strategy not in KERNEL_STRATEGIES:
            raise ValueError(f"unknown kernel_strategy {settings.kernel_strategy!r}")
        self.settings = settings
        self.device = torch.device(device)
        cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.bf16 = use_bf16(settings.bf16, self.device.type, cuda_bf16)  # bf16 autocast where it pays
        # the kernel prior is loaded (and named in the version) only when the strategy evaluates it
        needs_kernel = settings.kernel_strategy in USES_KERNEL_PRIOR
        if priors is not None:
            self.image_prior, kernel_prior = priors
        else:
            self.image_prior = load_shipped("image", device=device)
            kernel_prior = load_shipped("kernel", device=device) if needs_kernel else None
        self.kernel_prior: Prior | None = kernel_prior if needs_kernel else None
        self.model_version = self.image_prior.version + (
            f"+{self.kernel_prior.version}" if self.kernel_prior is not None else ""
        )
        s = settings
        self.image_score = tiled_score(
            autocast_score(self.image_prior, self.bf16, channels_last=True), s.tile_size, s.tile_overlap,
            s.tile_batch,
        )

    def kernel_canvas(self, kernel_size: int) -> int | None:
        """The kernel process's canvas: the kernel prior's training canvas when the configured
        kernel is larger (kernels resampled between the two; docs/models.md, "Kernel sizes")."""
        if self.kernel_prior is None:
            return None
        trained = self.kernel_prior.meta.get("data", {}).get("size")
        return int(trained) if trained and int(trained) < kernel_size else None

    def __call__(
        self, frames: list[FrameInput], progress: Callable[[int, int], None] | None = None
    ) -> list[FrameOutput]:
        """Restore `frames` at their own size; frames sharing a shape form one vectorised batch each,
        so a frame's result never depends on its batch mates (per-frame generators, no padding)."""
        started = time.perf_counter()
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(f.image.shape[:2], []).append(i)
        results: dict[int, FrameOutput] = {}
        for idx in groups.values():
            for i, out in zip(idx, self._restore_group([frames[i] for i in idx], progress), strict=True):
                results[i] = out
        per_frame = (time.perf_counter() - started) / max(1, len(frames))
        return [
            FrameOutput(**{**results[i].__dict__, "seconds": per_frame}) for i in range(len(frames))
        ]

    def noise_sigma(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Per-frame noise std on the [-1, 1] scale (B,) float64: the setting, or estimated."""
        s = self.settings.noise_sigma
        if s == "auto":
            return estimate_noise_sigma(y, m, floor=QUANTISATION_SIGMA)
        return torch.full((y.shape[0],), model_noise_sigma(float(s)), dtype=torch.float64)

    def estimate_kernel(self, y: torch.Tensor, m: torch.Tensor, sigma: torch.Tensor) -> list[KernelPlan]:
        """The kernel plan per frame (`kernel_strategy`, restoration/kernel_choice.py), each from its
        frame's most textured `working_size` region, in native pixels; `sigma` (B,) is the noise
        level on the [-1, 1] scale. CPU float64 work (FFT scores, classical estimate)."""
        s = self.settings
        plans = []
        for i in range(y.shape[0]):
            rows, cols = kernel_region(y[i], m[i], s.working_size)
            yr, mr = y[i : i + 1, :, rows, cols], m[i : i + 1, :, rows, cols]
            plans.append(KERNEL_STRATEGIES[s.kernel_strategy](
                yr.double().cpu(), mr.double().cpu(), s.kernel_size, sigma[i : i + 1]))
        return plans

    def guard(self, y: torch.Tensor, m: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor
              ) -> GuardVerdict | None:
        """The no-reference guard's verdict on restorations x of frames y (None: guard off)."""
        limits = self.settings.guard_settings()
        if limits is None:
            return None
        return judge(guard_stats(y.cpu(), m.cpu(), x.cpu(), kernel.cpu()), limits)

    def _restore_group(
        self, frames: list[FrameInput], progress: Callable[[int, int], None] | None
    ) -> list[FrameOutput]:
        s = self.settings
        h, w = frames[0].image.shape[:2]
        masks = [np.ones((h, w), bool) if f.mask is None else np.asarray(f.mask, bool) for f in frames]
        y = to_device(torch.stack([_to_tensor(f.image) for f in frames]), self.device)  # pinned, async
        m = to_device(torch.stack([torch.from_numpy(mk).float()[None] for mk in masks]), self.device)
        sigma = self.noise_sigma(y, m)
        plans = self.estimate_kernel(y, m, sigma)

        def stack(field: str) -> torch.Tensor | None:
            ks = [getattr(p, field) for p in plans]
            return None if ks[0] is None else torch.cat(ks).to(y.device, y.dtype)

        known, kernel_init = stack("known_kernel"), stack("kernel_init")
        kernel_prior = None
        if self.kernel_prior is not None:
            score = autocast_score(self.kernel_prior, self.bf16)
            kernel_prior = ScorePrior(score, self.kernel_prior.cld, self.kernel_canvas(s.kernel_size))
        blind = s.blind_settings()
        result = restore_blind(
            BlurMask.for_frames(y, m, s.kernel_size, sigma, blind.canvas_multiple),
            ScorePrior(self.image_score, self.image_prior.cld), kernel_prior, blind,
            [generator_for(f.seed_key, device=self.device) for f in frames],
            known_kernel=known, kernel_init=kernel_init, callback=progress,
        )
        x = result.x
        verdict = self.guard(y, m, x, result.kernel)
        rejected = [None if verdict is None or verdict.ok[i] else _to_uint8(x[i].cpu())
                    for i in range(len(frames))]
        if verdict is not None:  # a rejected restoration ships the input unchanged
            keep = torch.tensor(verdict.ok, device=x.device).view(-1, 1, 1, 1)
            x = torch.where(keep, x, y)
        gains = sharpness_gain(x, y, m)
        extents = kernel_extent(result.kernel.double())
        return [
            FrameOutput(
                key=f.key,
                restored=f.image if verdict and not verdict.ok[i] else _to_uint8(x[i].cpu()),
                kernel=result.kernel[i, 0].cpu().numpy().astype(np.float32),
                residual=float(result.diagnostics["residual_ratio"][i]),
                sharpness_gain=float(gains[i]),
                kernel_extent=float(extents[i]),
                nfe=result.nfe,
                seconds=0.0,
                noise_sigma=float(sigma[i]) / 2.0,
                kernel_choice=plans[i].choice.name[0],
                kernel_score=plans[i].choice.score(0),
                fallback="" if verdict is None else verdict.reason[i],
                guard=None if verdict is None else verdict.stats[i],
                rejected=rejected[i],
            )
            for i, f in enumerate(frames)
        ]
