"""The bench's methods: a literal table name -> function(frames, context) -> MethodOutput. Every
method returns images on [0, 1]; the runner quantises and scores them (flows/evaluation/scoring.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flows.evaluation.frames import BenchError, BenchFrame, to_unit
from restoration.classical import classical_blind, wiener_deconv
from restoration.rng import generator_for
from restoration.settings import RestorationSettings, model_noise_sigma

METHOD_NAMES: tuple[str, ...] = (
    "blurred",
    "classical-blind",
    "oracle-wiener",
    "oracle-cvsa",
    "blind-cvsa",
)


@dataclass(frozen=True, eq=False)
class MethodOutput:
    """What a method returns for a batch: images on [0, 1], kernels (or None), network evals."""

    x: torch.Tensor  # (B, 3, H, W)
    kernel: torch.Tensor | None  # (B, 1, K, K)
    nfe: int
    #: per frame: the kernel candidate the method chose and its no-reference score (or empty)
    choices: list[tuple[str, float]] = field(default_factory=list)
    #: per frame: why the guard shipped the input instead of the restoration ("" = it did not)
    fallbacks: list[str] = field(default_factory=list)
    #: per frame: the restoration the guard rejected, (3, H, W) on [0, 1], or None
    rejected: list[torch.Tensor | None] = field(default_factory=list)


@dataclass
class BenchContext:
    """Settings shared by the methods; priors are loaded on first use only."""

    settings: RestorationSettings
    device: str = "cpu"
    _priors: tuple[Any, Any] | None = field(default=None, repr=False)

    def sigma(self, frames: list[BenchFrame]) -> torch.Tensor:
        """Noise std per frame on the [-1, 1] scale (B,): the setting (given on [0, 1]), or each
        frame's own estimate when it is 'auto' -- the same rule as the pipeline's restorer."""
        from restoration.noise import QUANTISATION_SIGMA, estimate_noise_sigma

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
    from dataclasses import replace

    from restoration.cvsa import ScorePrior, restore_blind
    from restoration.physics import BlurMask
    from restoration.service import autocast_score
    from restoration.tiling import tiled_score

    k = _true_kernel(frames, "oracle-cvsa")
    image_prior, kernel_prior = ctx.priors()
    s = ctx.settings
    y = _cat(frames, "y") * 2 - 1
    score = tiled_score(autocast_score(image_prior, s.bf16), s.tile_size, s.tile_overlap, s.tile_batch)
    blind = replace(s.blind_settings(), method="proximal")
    with torch.no_grad():
        result = restore_blind(
            BlurMask.for_frames(y, _masks(frames), k.shape[-1], ctx.sigma(frames), blind.canvas_multiple),
            ScorePrior(score, image_prior.cld),
            ScorePrior(autocast_score(kernel_prior, s.bf16), kernel_prior.cld),
            blind, [generator_for(f"bench/{f.id}") for f in frames], known_kernel=k,
        )
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
                        choices=[(o.kernel_choice, o.kernel_score) for o in outs],
                        fallbacks=[o.fallback for o in outs],
                        rejected=[None if o.rejected is None else to_unit(o.rejected)[0] for o in outs])


#: name -> function(frames, context) -> MethodOutput. The whole registry: no discovery.
METHODS: dict[str, MethodFn] = {
    "blurred": method_blurred,
    "classical-blind": method_classical_blind,
    "oracle-wiener": method_oracle_wiener,
    "oracle-cvsa": method_oracle_cvsa,
    "blind-cvsa": method_blind_cvsa,
}
