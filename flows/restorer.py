"""Frames in, restored frames out: the unit of work a Ray actor runs (one vectorised batch).

Frames of any size and aspect come back at their input size. A frame whose longest side exceeds
`working_size` is area-downscaled to it for restoration (blur and noise shrink with it) and the
result is resized back (bicubic); smaller frames are restored at native size. Frames that share a
working shape are restored as one vectorised batch (one seeded generator per frame), so a frame's
result does not depend on its batch mates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
from PIL import Image

from flows.config import KernelInit, RestorationSettings, model_noise_sigma
from flows.device import to_device, use_bf16
from restoration.classical import blind_kernel
from restoration.cvsa import restore_blind
from restoration.kernels import kernel_extent
from restoration.metrics import sharpness_gain
from restoration.priors import Prior, load_shipped
from restoration.rng import generator_for

# 'prior': kernel prior + least-squares updates only; 'classical': kernel process anchored on the
# classical L0 estimate; 'classical-fixed': that estimate is the kernel (image sampled with CVSA).
KERNEL_INITS = get_args(KernelInit)  # the config's Literal: validated at load, one list


@dataclass(frozen=True)
class FrameInput:
    key: str
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) bool, True = observed
    seed_key: str  # stable string -> torch.Generator (object key + config hash)


@dataclass(frozen=True)
class FrameOutput:
    key: str
    restored: np.ndarray  # (H, W, 3) uint8, same size as the input
    kernel: np.ndarray  # (K, K) float32, sums to 1, at working scale
    residual: float  # RMS data-fit residual / noise sigma on observed pixels (~1 = fits to the noise)
    sharpness_gain: float
    kernel_extent: float
    nfe: int
    seconds: float
    scale: float  # working-size / input-size factor (1.0 when restored at native size)


def autocast_score(
    prior: Prior, enabled: bool
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The prior's score, optionally under bfloat16 autocast (2-3x faster on CPU), returned in float32."""
    if not enabled:
        return prior.score

    def score(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return prior.score(x, v, t).to(x.dtype)

    return score


def _working_shape(h: int, w: int, working_size: int) -> tuple[int, int, float]:
    scale = min(1.0, working_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale)), scale


def _resize(a: np.ndarray, hw: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if a.shape[:2] == hw:
        return a
    return np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), resample))


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    # copy: arrays from PIL are read-only
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).numpy()


class FrameRestorer:
    """Loads both priors once; `__call__` restores a list of frames as one batch."""

    def __init__(
        self,
        settings: RestorationSettings,
        device: str = "cpu",
        priors: tuple[Prior, Prior] | None = None,
    ) -> None:
        self.settings = settings
        self.device = torch.device(device)
        cuda_bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.bf16 = use_bf16(settings.bf16, self.device.type, cuda_bf16)  # bf16 autocast where it pays
        self.image_prior, self.kernel_prior = priors or (
            load_shipped("image", device=device),
            load_shipped("kernel", device=device),
        )
        self.model_version = f"{self.image_prior.version}+{self.kernel_prior.version}"

    def kernel_canvas(self, kernel_size: int) -> int | None:
        """The kernel process's canvas: the kernel prior's training canvas when the configured
        kernel is larger (kernels resampled between the two; docs/models.md, "Kernel sizes")."""
        trained = self.kernel_prior.meta.get("data", {}).get("size")
        return int(trained) if trained and int(trained) < kernel_size else None

    def __call__(
        self, frames: list[FrameInput], progress: Callable[[int, int], None] | None = None
    ) -> list[FrameOutput]:
        """Restore `frames`; frames sharing a working shape form one vectorised batch each, so a
        frame's result never depends on its batch mates (per-frame generators, no padding)."""
        started = time.perf_counter()
        shapes = [_working_shape(*f.image.shape[:2], self.settings.working_size) for f in frames]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (h, w, _) in enumerate(shapes):
            groups.setdefault((h, w), []).append(i)
        results: dict[int, tuple[np.ndarray, np.ndarray, float, float, float, int]] = {}
        for (h, w), idx in groups.items():
            for i, row in zip(
                idx,
                self._restore_group([frames[i] for i in idx], h, w, [shapes[i][2] for i in idx], progress),
                strict=True,
            ):
                results[i] = row
        per_frame = (time.perf_counter() - started) / max(1, len(frames))
        outputs = []
        for i, f in enumerate(frames):
            crop, kernel, residual, gain, extent, nfe = results[i]
            outputs.append(
                FrameOutput(
                    key=f.key,
                    restored=_resize(crop, f.image.shape[:2], Image.Resampling.BICUBIC),
                    kernel=kernel,
                    residual=residual,
                    sharpness_gain=gain,
                    kernel_extent=extent,
                    nfe=nfe,
                    seconds=per_frame,
                    scale=shapes[i][2],
                )
            )
        return outputs

    def _restore_group(
        self,
        frames: list[FrameInput],
        h: int,
        w: int,
        scales: list[float],
        progress: Callable[[int, int], None] | None,
    ) -> list[tuple[np.ndarray, np.ndarray, float, float, float, int]]:
        s = self.settings
        ys, ms = [], []
        for f in frames:
            ys.append(_to_tensor(_resize(f.image, (h, w), Image.Resampling.BOX)))
            mask = (
                np.ones((h, w), bool)
                if f.mask is None
                else _resize(f.mask.astype(np.uint8) * 255, (h, w), Image.Resampling.NEAREST) >= 128
            )
            ms.append(torch.from_numpy(mask).float()[None])
        y = to_device(torch.stack(ys), self.device)  # pinned + asynchronous to a GPU
        m = to_device(torch.stack(ms), self.device)
        # noise std on the [-1, 1] scale, per frame: area downscaling by 1/scale averages it down
        sigma = torch.tensor([model_noise_sigma(s.noise_sigma) * sc for sc in scales], dtype=torch.float64)
        kernel_init = known = None
        if s.kernel_init != "prior":
            classical = blind_kernel(y.double(), m.double(), s.kernel_size).to(y.dtype)
            kernel_init, known = (classical, None) if s.kernel_init == "classical" else (None, classical)
        result = restore_blind(
            y, m, autocast_score(self.image_prior, self.bf16), autocast_score(self.kernel_prior, self.bf16),
            image_cld=self.image_prior.cld, kernel_cld=self.kernel_prior.cld,
            kernel_size=s.kernel_size, steps=s.steps, noise_sigma=sigma,
            generator=[generator_for(f.seed_key, device=self.device) for f in frames],
            method=s.method, image_guidance=s.image_guidance, kernel_guidance=s.kernel_guidance,
            prox_strength=s.prox_strength, renoise=s.renoise, kernel_init=kernel_init, known_kernel=known,
            kernel_t_start=s.kernel_t_start, kernel_canvas=self.kernel_canvas(s.kernel_size),
            callback=progress,
        )  # fmt: skip
        gains = sharpness_gain(result.x, y, m)
        extents = kernel_extent(result.kernel.double())
        return [
            (
                _to_uint8(result.x[i].cpu()),
                result.kernel[i, 0].cpu().numpy().astype(np.float32),
                float(result.diagnostics["residual_ratio"][i]),
                float(gains[i]),
                float(extents[i]),
                result.nfe,
            )
            for i in range(len(frames))
        ]
