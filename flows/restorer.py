"""Frames in, restored frames out: the unit of work a Ray actor runs (one vectorised batch).

Frames of any size and aspect come back at their input size. A frame whose longest side exceeds
`working_size` is area-downscaled to it for restoration (blur and noise shrink with it) and the
result is resized back (bicubic); smaller frames are restored at native size. Frames of one batch
are placed on a common canvas; padding is marked unobserved (mask 0), so each frame's result does
not depend on its batch mates (one seeded generator per frame).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from flows.config import RestorationSettings
from restoration.cvsa import restore_blind
from restoration.kernels import kernel_extent
from restoration.metrics import sharpness_gain
from restoration.priors import Prior, load_shipped
from restoration.rng import generator_for


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
    return torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1.0


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
        self.image_prior, self.kernel_prior = priors or (
            load_shipped("image", device=device),
            load_shipped("kernel", device=device),
        )
        self.model_version = f"{self.image_prior.version}+{self.kernel_prior.version}"

    def __call__(
        self, frames: list[FrameInput], progress: Callable[[int, int], None] | None = None
    ) -> list[FrameOutput]:
        if not frames:
            return []
        s = self.settings
        started = time.perf_counter()
        shapes = [_working_shape(*f.image.shape[:2], s.working_size) for f in frames]
        hmax = max(h for h, _, _ in shapes)
        wmax = max(w for _, w, _ in shapes)
        ys, ms = [], []
        for f, (h, w, _) in zip(frames, shapes, strict=True):
            img = _resize(f.image, (h, w), Image.Resampling.BOX)
            mask = (
                np.ones((h, w), bool)
                if f.mask is None
                else _resize(f.mask.astype(np.uint8) * 255, (h, w), Image.Resampling.NEAREST) >= 128
            )
            y = torch.zeros(3, hmax, wmax)
            m = torch.zeros(1, hmax, wmax)
            y[:, :h, :w] = _to_tensor(img)
            m[0, :h, :w] = torch.from_numpy(mask).float()
            # replicate-pad the unobserved margin so the prior sees a plausible continuation
            y[:, h:, :] = y[:, h - 1 : h, :]
            y[:, :, w:] = y[:, :, w - 1 : w]
            ys.append(y)
            ms.append(m)
        y = torch.stack(ys).to(self.device)
        m = torch.stack(ms).to(self.device)
        # noise std on the [-1, 1] scale, per frame: area downscaling by 1/scale averages it down
        sigma = torch.tensor([2.0 * s.noise_sigma * sc for _, _, sc in shapes], dtype=torch.float64)
        result = restore_blind(
            y, m, autocast_score(self.image_prior, s.bf16), autocast_score(self.kernel_prior, s.bf16),
            image_cld=self.image_prior.cld, kernel_cld=self.kernel_prior.cld,
            kernel_size=s.kernel_size, steps=s.steps, noise_sigma=sigma,
            generator=[generator_for(f.seed_key, device=self.device) for f in frames],
            method=s.method, image_guidance=s.image_guidance, kernel_guidance=s.kernel_guidance,
            callback=progress,
        )  # fmt: skip
        gains = sharpness_gain(result.x, y, m)
        extents = kernel_extent(result.kernel.double())
        per_frame = (time.perf_counter() - started) / len(frames)
        outputs = []
        for i, (f, (h, w, sc)) in enumerate(zip(frames, shapes, strict=True)):
            crop = _to_uint8(result.x[i, :, :h, :w].cpu())
            restored = _resize(crop, f.image.shape[:2], Image.Resampling.BICUBIC)
            outputs.append(
                FrameOutput(
                    key=f.key,
                    restored=restored,
                    kernel=result.kernel[i, 0].cpu().numpy().astype(np.float32),
                    residual=float(result.diagnostics["residual_ratio"][i]),
                    sharpness_gain=float(gains[i]),
                    kernel_extent=float(extents[i]),
                    nfe=result.nfe,
                    seconds=per_frame,
                    scale=sc,
                )
            )
        return outputs
