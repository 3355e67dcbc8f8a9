"""The one kernel module: what every part of restoration/ does *to* a blur kernel.

Projection (threshold, minimum component, centring by the centre of mass; a soft, differentiable
variant), integer and sub-pixel shifts, resampling between kernel canvases, the delta kernel,
odd sizes, the kernel prior's representation, and the luma a kernel is estimated on. The
generators (motion, Gaussian, defocus kernels) and kernel statistics live in
:mod:`restoration.kernels`.

Conventions (docs/design.md §3): kernels are ``(B, 1, K, K)``, K odd, non-negative, summing to 1;
the centre pixel is ``c = (K - 1) // 2``.

Kernel prior representation: the prior works on ``p = 2 sqrt(k / max k) - 1`` in [-1, 1] (gamma
companding, gamma = 2). The inverse squares ``(p + 1) / 2`` after clamping to [0, 1], so a
background error e in p becomes only (e/2)^2 relative to the peak: e = 0.05 leaves 6e-4 instead
of 2.5e-2 with a linear map. :func:`from_prior` then projects (threshold ``PRIOR_TAU`` in the
squared domain, i.e. p below -0.72; components lighter than ``PRIOR_MIN_COMPONENT`` of the
heaviest dropped; integer centring).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = [
    "LUMA",
    "PRIOR_MIN_COMPONENT",
    "PRIOR_TAU",
    "centre_of_mass",
    "delta_kernel",
    "erode",
    "from_prior",
    "luma",
    "odd_size",
    "project",
    "project_kernel",
    "recentre_subpixel",
    "resample_kernel",
    "resample_matrix",
    "shift_zero",
    "soft_kernel",
    "soft_project",
    "to_prior",
]

#: Rec. 601 luma weights of (R, G, B): the grey level kernels are estimated on.
LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: Relative threshold of :func:`from_prior`, in the kernel (squared) domain.
PRIOR_TAU: float = 0.02
#: Components lighter than this fraction of the heaviest one are dropped by :func:`from_prior`.
PRIOR_MIN_COMPONENT: float = 0.1


class KernelError(ValueError):
    """Raised for an invalid kernel size, parameter or tensor shape."""


def check_size(size: int, minimum: int = 3) -> None:
    if not isinstance(size, int) or size < minimum or size % 2 == 0:
        raise KernelError(f"kernel size must be an odd int >= {minimum}, got {size!r}")


def check_batch(k: torch.Tensor) -> None:
    if k.dim() != 4 or k.shape[1] != 1 or k.shape[2] != k.shape[3] or k.shape[2] % 2 == 0:
        raise KernelError(f"expected kernels of shape (B, 1, K, K) with odd K, got {tuple(k.shape)}")


# --------------------------------------------------------------------------- small pieces
def odd_size(v: float) -> int:
    """The odd integer >= 3 nearest to ``v`` (rounded up when ``round(v)`` is even)."""
    n = max(3, round(v))
    return n if n % 2 else n + 1


def luma(y: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grey level of (B, C, H, W) frames: Rec. 601 luma for RGB, else the channel mean."""
    if y.shape[1] == 3:
        w = torch.tensor(LUMA, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
        return (y * w).sum(dim=1, keepdim=True)
    return y.mean(dim=1, keepdim=True)


def erode(m: torch.Tensor, r: int) -> torch.Tensor:
    """Binary erosion of (B, 1, H, W) masks by a (2r + 1)² square (zero-padded borders erode)."""
    return -F.max_pool2d(-m, 2 * r + 1, stride=1, padding=r) if r > 0 else m


def delta_kernel(size: int, batch: int = 1, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The identity kernel (batch, 1, K, K)."""
    k = torch.zeros(batch, 1, size, size, dtype=dtype)
    k[..., size // 2, size // 2] = 1.0
    return k


def centre_of_mass(k: torch.Tensor) -> torch.Tensor:
    """Centre of mass (B, 2) as (row, col) in pixel indices of kernels (B, 1, K, K)."""
    check_batch(k)
    size = k.shape[-1]
    r = torch.arange(size, dtype=k.dtype, device=k.device)
    total = k.sum(dim=(1, 2, 3)).clamp_min(torch.finfo(k.dtype).tiny)
    row = (k.sum(dim=(1, 3)) * r).sum(dim=1) / total
    col = (k.sum(dim=(1, 2)) * r).sum(dim=1) / total
    return torch.stack([row, col], dim=1)


# --------------------------------------------------------------------------- shifts
def shift_zero(k: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Integer shift per sample (content moves by +dy, +dx) with zero fill, (B, 1, K, K)."""
    out = torch.zeros_like(k)
    size = k.shape[-1]
    for i in range(k.shape[0]):
        sy, sx = int(dy[i]), int(dx[i])
        src_y = slice(max(0, -sy), min(size, size - sy))
        dst_y = slice(max(0, sy), min(size, size + sy))
        src_x = slice(max(0, -sx), min(size, size - sx))
        dst_x = slice(max(0, sx), min(size, size + sx))
        out[i, :, dst_y, dst_x] = k[i, :, src_y, src_x]
    return out


def recentre_subpixel(k: torch.Tensor) -> torch.Tensor:
    """Shift kernels (bilinear resampling) so the centre of mass is exactly the centre pixel.

    Blind deconvolution recovers the kernel only up to a translation; integer centring leaves up
    to half a pixel, which would shift the restored image by as much.
    """
    size = k.shape[-1]
    c = (size - 1) / 2
    com = centre_of_mass(k)
    # grid_sample with align_corners=True: pixel i <-> -1 + 2 i / (K - 1)
    lin = torch.linspace(-1, 1, size, dtype=k.dtype, device=k.device)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    scale = 2.0 / (size - 1)
    grid = torch.stack(
        [
            gx[None] + ((com[:, 1] - c) * scale)[:, None, None],
            gy[None] + ((com[:, 0] - c) * scale)[:, None, None],
        ],
        dim=-1,
    )
    out = F.grid_sample(k, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.clamp_min(0)
    return out / out.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)


# --------------------------------------------------------------------------- projection
def project_kernel(
    k: torch.Tensor,
    threshold: float,
    min_component: float,
    relative_to: Literal["total", "largest"] = "total",
) -> torch.Tensor:
    """Non-negative; entries below ``threshold`` x the peak zeroed; 8-connected components lighter
    than ``min_component`` x (the total mass, or the heaviest component's) removed; sum 1; the
    centre of mass moved to the nearest pixel of the centre by an integer zero-filled shift
    (never a wrap-around roll). An all-zero kernel becomes the delta. Float64 per kernel (the
    classical estimator's hard thresholds must not depend on rounding); returns ``k``'s dtype."""
    out = torch.empty_like(k)
    size = k.shape[-1]
    c = (size - 1) // 2
    for i in range(k.shape[0]):
        a = k[i, 0].clamp_min(0).cpu().double().numpy()
        peak = a.max()
        if peak <= 0:
            a = np.zeros_like(a)
            a[c, c] = 1.0
        else:
            a[a < threshold * peak] = 0.0
            labels, n = ndimage.label(a > 0, structure=np.ones((3, 3)))
            if n > 1:
                mass = ndimage.sum(a, labels, index=np.arange(1, n + 1))
                reference = a.sum() if relative_to == "total" else mass.max()
                light = np.flatnonzero(mass < min_component * reference) + 1
                a[np.isin(labels, light)] = 0.0
            a /= a.sum()
            r = np.arange(size)
            cy, cx = (a.sum(axis=1) * r).sum(), (a.sum(axis=0) * r).sum()
            a = shift_zero(torch.from_numpy(a)[None, None], [round(c - cy)], [round(c - cx)])[0, 0].numpy()
            a /= a.sum()
        out[i, 0] = torch.from_numpy(a).to(k)
    return out


def soft_project(k: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """The soft projection: non-negative, entries below ``threshold`` x max zeroed, sum 1 (per
    sample; the delta where nothing is left). Differentiable for threshold 0; no components, no
    centring — cheap enough for every step of a sampler."""
    a = k.clamp_min(0.0)
    if threshold > 0:
        a = a * (a >= threshold * a.amax(dim=(1, 2, 3), keepdim=True))
    total = a.flatten(1).sum(dim=1).reshape(-1, 1, 1, 1)
    delta = delta_kernel(a.shape[-1], 1, a.dtype).to(a.device).expand_as(a)
    return torch.where(total > 0, a / total.clamp_min(1e-12), delta)


# --------------------------------------------------------------------------- prior representation
def to_prior(k: torch.Tensor) -> torch.Tensor:
    """Kernel (B, 1, K, K) -> prior representation p = 2 sqrt(k / max k) - 1 in [-1, 1]."""
    check_batch(k)
    a = k.clamp_min(0)
    peak = a.amax(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(k.dtype).tiny)
    return 2.0 * (a / peak).sqrt() - 1.0


def _from_prior_linear(p: torch.Tensor) -> torch.Tensor:
    """The inverse companding ((p + 1) / 2 clamped to [0, 1]) squared: kernel up to scale."""
    return ((p + 1.0) / 2.0).clamp(0.0, 1.0) ** 2


def from_prior(
    p: torch.Tensor, tau: float = PRIOR_TAU, min_component: float = PRIOR_MIN_COMPONENT
) -> torch.Tensor:
    """Prior representation (B, 1, K, K) -> kernel: :func:`project_kernel` of the squared map
    (threshold ``tau``, components relative to the heaviest one), float32."""
    check_batch(p)
    return project_kernel(_from_prior_linear(p.float()), tau, min_component, relative_to="largest")


def soft_kernel(p: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Kernel from the prior representation by the soft projection (a cheap, differentiable stand-in
    for :func:`from_prior` inside a sampling loop)."""
    return soft_project(_from_prior_linear(p), threshold)


def project(k: torch.Tensor) -> torch.Tensor:
    """The projection ``from_prior(to_prior(k))``: the kernel the prior can represent."""
    return from_prior(to_prior(k))


# --------------------------------------------------------------------------- canvas resampling
def resample_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n_out, n_in) area-resampling matrix between centred pixel grids of n_in and n_out.

    The whole input canvas maps onto the whole output canvas (scale r = n_in / n_out input
    pixels per output pixel, centre on centre); entry (j, i) is the length of input pixel i
    that falls inside output pixel j, in input-pixel units. Every column sums to 1, so a
    kernel's mass is conserved exactly, and a symmetric kernel stays centred.
    """
    check_size(n_in, 1)
    check_size(n_out, 1)
    r = n_in / n_out
    i = torch.arange(n_in, dtype=torch.float64) - (n_in - 1) / 2
    j = torch.arange(n_out, dtype=torch.float64) - (n_out - 1) / 2
    lo = torch.maximum((j[:, None] - 0.5) * r, i[None, :] - 0.5)
    hi = torch.minimum((j[:, None] + 0.5) * r, i[None, :] + 0.5)
    return (hi - lo).clamp_min(0).to(dtype)


def resample_kernel(k: torch.Tensor, size: int, mode: Literal["area", "bilinear"] = "area") -> torch.Tensor:
    """Kernels (B, 1, K, K) resampled to (B, 1, size, size), centre pixel on centre pixel.

    ``area`` (default): A k A^T with :func:`resample_matrix` — mass conserved exactly, linear (so
    autograd passes through it); runs the kernel prior (trained on its canvas, e.g. 31 px) for
    larger product kernels (docs/models.md, "Kernel sizes"). ``bilinear``: interpolation of the
    kernel as an image, clamped and renormalised (the classical estimator's pyramid).
    """
    check_batch(k)
    n = k.shape[-1]
    if size == n:
        return k
    if mode == "bilinear":
        out = F.interpolate(k, size=(size, size), mode="bilinear", align_corners=True).clamp_min(0)
        return out / out.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    a = resample_matrix(n, size, k.dtype).to(k.device)
    return a @ k @ a.T
