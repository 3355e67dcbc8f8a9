"""A no-reference guard: never ship a restoration that is worse than the frame it came from.

A blind restoration can fail in ways no truth-free data term sees: with a wrong kernel the
sampler still fits the data (k * x = y holds for a wrong pair), and what it fits is noise blown up
at the kernel's spectral zeros (a dense maze), ringing halos, a ghost copy of an edge, or colour
fringes. Each statistic below is a ratio of the output against its own input, with a meaning that
does not depend on the frame:

- ``fit``: RMS of the re-blur residual M ⊙ (k ∗ x − y) over observed interior pixels, in units of
  the frame's noise floor (:func:`restoration.noise.noise_floor`: the noise of its flattest
  squares, which fine texture cannot inflate -- the frame-wide estimate can, and a residual
  measured against an inflated noise level hides a lost texture). An output that explains its
  input gives ~1 (below 1: it absorbed some noise); past the limit, the residual holds image
  structure the output does not explain: it is not what the camera saw through this kernel.
- ``sparsity``: the normalised sparsity ‖∇x‖₁ / ‖∇x‖₂ of the output's luma gradients divided by
  the input's (Krishnan et al. 2011: blur and noise both raise it, sharp natural images have it
  low). Deblurring concentrates gradient energy on edges and lowers it (< 1); an output above its
  input (> 1) added dense texture -- amplified noise, a maze, ringing -- rather than edges.
- ``chroma``: how much more the output raised its chroma gradient energy than its luma gradient
  energy. A blur acts on the three channels alike, so true deblurring raises both by about the
  same factor (≈ 1); colour fringes and rainbow stripes raise chroma alone.

A frame fails when any statistic is past its limit (:class:`GuardSettings`); the caller then
ships the safe candidate (the input unchanged) and records the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from restoration.kernel_ops import erode, luma
from restoration.noise import QUANTISATION_SIGMA, noise_floor
from restoration.operators import blur

__all__ = ["GUARD_REASONS", "GuardSettings", "GuardVerdict", "guard_stats", "judge"]

#: reason -> the statistic that fails it, in the order they are checked
GUARD_REASONS: tuple[str, ...] = ("fit", "sparsity", "chroma")


@dataclass(frozen=True)
class GuardSettings:
    """Limits of the guard's statistics (module docstring); a frame past any of them falls back."""

    max_fit: float = 1.2
    max_sparsity: float = 1.0
    max_chroma: float = 2.0


@dataclass(frozen=True)
class GuardVerdict:
    """Per frame: whether the output may ship, why not (a reason or ""), and the statistics."""

    ok: list[bool]
    reason: list[str]
    stats: list[dict[str, float]]


def _luma_chroma(x: Tensor) -> tuple[Tensor, Tensor]:
    """Luma (B, 1, H, W) and the two opponent chroma channels (B, 2, H, W) of RGB x."""
    lum = luma(x)
    chroma = torch.cat([x[:, 2:3] - lum, x[:, 0:1] - lum], dim=1)
    return lum, chroma


def _grads(a: Tensor, m: Tensor) -> Tensor:
    """Forward differences of a (B, C, H, W) on pixel pairs both observed, flattened (B, N)."""
    gx = (a[..., :, 1:] - a[..., :, :-1]) * (m[..., :, 1:] * m[..., :, :-1])
    gy = (a[..., 1:, :] - a[..., :-1, :]) * (m[..., 1:, :] * m[..., :-1, :])
    return torch.cat([gx.flatten(1), gy.flatten(1)], dim=1)


def _interior(m: Tensor, r: int) -> Tensor:
    """The mask eroded by r px and with an r px border cleared (where 'same' convolution is exact
    up to the kernel's reach)."""
    e = erode(m, r)
    if r > 0:
        e = e.clone()
        e[..., :r, :] = 0
        e[..., -r:, :] = 0
        e[..., :, :r] = 0
        e[..., :, -r:] = 0
    return e


def guard_stats(y: Tensor, mask: Tensor | None, x: Tensor, kernel: Tensor) -> list[dict[str, float]]:
    """The guard's statistics per frame (module docstring).

    y, x (B, 3, H, W) input and output on [-1, 1]; mask (B, 1, H, W) 1 = observed (None: all);
    kernel (B, 1, K, K) the kernel the output was restored with (odd K).
    """
    y, x, k = y.double(), x.double(), kernel.double()
    b, c, h, w = y.shape
    m = torch.ones(b, 1, h, w, dtype=y.dtype, device=y.device) if mask is None else (mask > 0.5).double()
    sigma = noise_floor(y, m, floor=QUANTISATION_SIGMA)
    r = k.shape[-1] // 2
    out = []
    for i in range(b):
        xi, yi, mi = x[i : i + 1], y[i : i + 1], m[i : i + 1]
        pad = F.pad(xi, (r, r, r, r), mode="replicate") if r > 0 else xi
        reblur = blur(pad, k[i : i + 1], method="fft")  # 'same' size; FFT: O(N log N) at any K
        inner = _interior(mi, r)
        if float(inner.sum()) < 16:
            inner = mi
        n = (inner.sum() * c).clamp_min(1.0)
        rms = torch.sqrt(((reblur - yi) ** 2 * inner).sum() / n)
        fit = float(rms / max(float(sigma[i]), 1e-6))
        lx, cx = _luma_chroma(xi)
        ly, cy = _luma_chroma(yi)
        gx, gy = _grads(lx, mi), _grads(ly, mi)
        nsm = (gx.abs().sum() / gx.norm().clamp_min(1e-12)) / (gy.abs().sum() / gy.norm().clamp_min(1e-12))
        luma_gain = gx.pow(2).sum() / gy.pow(2).sum().clamp_min(1e-12)
        chroma_gain = _grads(cx, mi).pow(2).sum() / _grads(cy, mi).pow(2).sum().clamp_min(1e-12)
        out.append({"fit": fit, "sparsity": float(nsm),
                    "chroma": float(chroma_gain / luma_gain.clamp_min(1e-12))})
    return out


def judge(stats: list[dict[str, float]], settings: GuardSettings) -> GuardVerdict:
    """Apply the limits: the first statistic past its limit names the reason."""
    limits = {"fit": settings.max_fit, "sparsity": settings.max_sparsity, "chroma": settings.max_chroma}
    ok, reasons = [], []
    for s in stats:
        bad = [name for name in GUARD_REASONS if not s[name] <= limits[name]]  # NaN fails too
        ok.append(not bad)
        reasons.append(bad[0] if bad else "")
    return GuardVerdict(ok, reasons, stats)
